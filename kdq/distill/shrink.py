"""Make a student by dropping decoder layers from a (fine-tuned) teacher.

Initialising the student from the teacher's own weights (embeddings, kept layers, final
norm and ``score`` head) starts it far closer to the teacher than a random or generic
checkpoint would (Sanh et al. 2019, DistilBERT §3: "taking one layer out of two").
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import atomic_dir
from ..models import load_classifier


def select_layers(num_layers: int, every: int) -> list:
    """Every ``every``-th layer from the first, plus the last (it feeds the head). Sorted, unique."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return sorted(set(range(0, num_layers, every)) | {num_layers - 1})


def _decoder_layers(model) -> torch.nn.ModuleList:
    base = getattr(model, "model", None) or model.base_model
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no decoder layer list at model.model.layers; "
                         "shrink supports Llama-style decoders (Llama, Danube3, SmolLM2, Mistral, Qwen2).")
    return base, layers


def shrink(model, *, keep: Sequence[int] | None = None, every: int = 3, out_dir=None, tokenizer=None,
           overwrite: bool = False):
    """Return (or save) a copy of ``model`` that keeps only some decoder layers.

    Args:
        model: folder or ``*ForSequenceClassification`` (Llama-style). Never modified.
        keep: explicit layer indices to keep; default :func:`select_layers` with ``every``.
        out_dir: when given, the student is saved there (atomically, with the tokenizer)
            and the folder path is returned; otherwise the model object is returned.
    The kept layers are renumbered (``self_attn.layer_idx``) and ``config.num_hidden_layers``
    (and ``layer_types`` when present) updated, so the copy saves and reloads as a normal model.
    """
    # Copy an object before load_classifier touches it (it merges adapters and sets pad ids in place).
    loaded = load_classifier(model if isinstance(model, (str, Path)) else copy.deepcopy(model),
                             tokenizer=tokenizer, merge_adapter=True)
    src = loaded.model
    base, layers = _decoder_layers(src)
    n = len(layers)
    keep = list(keep) if keep is not None else select_layers(n, every)
    bad = [i for i in keep if not 0 <= i < n]
    if bad or not keep or len(set(keep)) != len(keep):
        raise ValueError(f"keep={keep}: layer indices must be unique and in [0, {n - 1}].")
    keep = sorted(keep)
    base.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(base.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx
    cfg = src.config
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.kdq_shrink = {"source": loaded.source or loaded.fingerprint, "source_layers": n, "kept_layers": keep}
    if out_dir is None:
        return src
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        src.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
