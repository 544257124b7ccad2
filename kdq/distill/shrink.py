"""Make a student by dropping decoder layers from a (fine-tuned) teacher.

Initialising the student from the teacher's own weights (embeddings, kept layers, final
norm and ``score`` head) starts it far closer to the teacher than a random or generic
checkpoint would (Sanh et al. 2019, DistilBERT §3: "taking one layer out of two").

Which layers to keep (``strategy``):

* ``"uniform"``: every ``every``-th layer from the first, plus the last;
* ``"block-influence"``: ShortGPT's block influence (Men et al. 2024): on calibration rows,
  score layer ``i`` by ``BI_i = 1 − cos(x_i, x_{i+1})``, the mean over real tokens of the
  cosine between its input and output hidden states. A layer that barely turns the hidden
  state is redundant. The first and last layers are always kept (the last feeds the
  head; Gromov et al. 2024 find the deep layers redundant except the final one), and the
  rest are filled with the highest-scoring layers;
* an explicit ``keep`` list.

The kept-layer map is saved in ``config.json`` under ``kdq_shrink`` (``kept_layers``: the
teacher layer each student layer was copied from), which is what the hidden-state
distillation term (``DistillConfig.hidden_weight``) reads.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from ..models import load_classifier
from ..utils.atomic import atomic_dir

STRATEGIES = ("uniform", "block-influence")


def select_layers(num_layers: int, every: int) -> list:
    """Every ``every``-th layer from the first, plus the last (it feeds the head). Sorted, unique."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return sorted(set(range(0, num_layers, every)) | {num_layers - 1})


def select_by_influence(scores: Sequence[float], num_keep: int) -> list:
    """The first and last layer plus the ``num_keep − 2`` inner layers with the highest scores. Sorted."""
    n = len(scores)
    if not 2 <= num_keep <= n:
        raise ValueError(
            f"num_layers must be in [2, {n}] for block-influence (first and last are always kept), got {num_keep}"
        )
    inner = sorted(range(1, n - 1), key=lambda i: (-scores[i], i))[: num_keep - 2]
    return sorted({0, n - 1, *inner})


def _decoder_layers(model) -> torch.nn.ModuleList:
    base = getattr(model, "model", None) or model.base_model
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__}: no decoder layer list at model.model.layers; "
            "shrink supports Llama-style decoders (Llama, Danube3, SmolLM2, Mistral, Qwen2)."
        )
    return base, layers


@torch.no_grad()
def block_influence(model, tokenizer, calibration, *, template=None, batch_size: int = 8) -> list:
    """``BI_i = 1 − mean cos(input_i, output_i)`` per decoder layer, over the real tokens of ``calibration``.

    Args:
        calibration: arena rows (anything :func:`kdq.data.load_arena` reads), rendered with
            ``template`` (default: the template recorded in the model's config).
    """
    from ..data import encode, load_arena
    from ..models import template_of
    from ..runtime.batching import length_sorted_batches, pad_batch
    from ..runtime.template import TemplateConfig

    template = template or template_of(model) or TemplateConfig()
    rows = load_arena(calibration)
    seqs = encode(rows, tokenizer, template, desc="render calibration rows")["input_ids"]
    _, layers = _decoder_layers(model)
    n = len(layers)
    sums, count = torch.zeros(n, dtype=torch.float64), 0.0
    captured = {}

    def hook(i):
        def fn(module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            captured[i] = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1, eps=1e-6)

        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in length_sorted_batches([len(s) for s in seqs], batch_size):
            ids, mask = pad_batch([seqs[i] for i in batch], tokenizer.pad_token_id)
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            m = mask.to(device).float()
            for i in range(n):
                sums[i] += float(((1.0 - captured[i]) * m).sum())
            count += float(m.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return (sums / max(count, 1.0)).tolist()


def shrink(
    model,
    *,
    keep: Sequence[int] | None = None,
    every: int = 3,
    strategy: str = "uniform",
    num_layers: int | None = None,
    calibration=None,
    out_dir=None,
    tokenizer=None,
    overwrite: bool = False,
    verbose: bool = True,
):
    """Return (or save) a copy of ``model`` that keeps only some decoder layers.

    Args:
        model: folder or ``*ForSequenceClassification`` (Llama-style). Never modified.
        keep: explicit layer indices to keep (overrides ``strategy``).
        every: ``"uniform"`` keeps every ``every``-th layer plus the last; for
            ``"block-influence"`` it sets the default layer count, so both strategies give
            students of the same depth.
        strategy: ``"uniform"`` or ``"block-influence"`` (needs ``calibration``).
        num_layers: how many layers ``"block-influence"`` keeps (default: as many as uniform).
        calibration: arena rows for the block-influence scores (a few hundred are plenty).
        out_dir: when given, the student is saved there (atomically, with the tokenizer)
            and the folder path is returned; otherwise the model object is returned.
    The kept layers are renumbered (``self_attn.layer_idx``) and ``config.num_hidden_layers``
    (and ``layer_types`` when present) updated, so the copy saves and reloads as a normal model.
    ``config.kdq_shrink`` records the source, the strategy, the kept-layer map and the scores.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"shrink: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "block-influence" and keep is None and calibration is None:
        raise ValueError(
            "shrink(strategy='block-influence') scores layers on calibration rows: pass calibration=rows "
            "(a few hundred training rows), or use strategy='uniform'."
        )
    # Copy an object before load_classifier touches it (it merges adapters and sets pad ids in place).
    loaded = load_classifier(
        model if isinstance(model, (str, Path)) else copy.deepcopy(model), tokenizer=tokenizer, merge_adapter=True
    )
    src = loaded.model
    base, layers = _decoder_layers(src)
    n = len(layers)
    scores = None
    if keep is not None:
        strategy = "explicit"
        keep = list(keep)
    elif strategy == "uniform":
        keep = (
            select_layers(n, every)
            if num_layers is None
            else sorted({round(k * (n - 1) / max(num_layers - 1, 1)) for k in range(num_layers)})
        )
    else:
        scores = block_influence(src, loaded.tokenizer, calibration)
        keep = select_by_influence(scores, num_layers if num_layers is not None else len(select_layers(n, every)))
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
    cfg.kdq_shrink = {
        "source": loaded.source or loaded.fingerprint,
        "source_layers": n,
        "kept_layers": keep,
        "strategy": strategy,
        "scores": [round(x, 6) for x in scores] if scores else None,
    }
    if verbose:
        print(f"kdq shrink: kept {len(keep)} of {n} layers ({strategy}): {keep}")
    if out_dir is None:
        return src
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        src.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
