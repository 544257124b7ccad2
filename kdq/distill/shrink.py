"""Make a student from a (fine-tuned) teacher: drop decoder layers, narrow the width, or both.

Initialising the student from the teacher's own weights (embeddings, kept layers, final
norm and ``score`` head) starts it far closer to the teacher than a random or generic
checkpoint would (Sanh et al. 2019, DistilBERT §3: "taking one layer out of two").

Which layers to keep (:class:`~kdq.distill.shrink_config.ShrinkConfig` ``strategy``):

* ``"uniform"``: every ``every``-th layer from the first, plus the last;
* ``"block-influence"``: ShortGPT's block influence (Men et al. 2024): on calibration rows,
  score layer ``i`` by ``BI_i = 1 − cos(x_i, x_{i+1})``, the mean over real tokens of the
  cosine between its input and output hidden states. A layer that barely turns the hidden
  state is redundant. The first and last layers are always kept (the last feeds the
  head; Gromov et al. 2024 find the deep layers redundant except the final one), and the
  rest are filled with the highest-scoring layers;
* an explicit ``keep`` list.

Width pruning (``ShrinkConfig`` ``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
``num_key_value_heads``) narrows the kept layers by Minitron's activation importance
(:mod:`kdq.distill.width`).

The kept-layer map is saved in ``config.json`` under ``kdq_shrink`` (``kept_layers``: the
teacher layer each student layer was copied from; ``width``: the kept channels, neurons and
heads), which is what the hidden-state distillation term (``DistillConfig.loss.hidden_weight``)
reads: its layer map, and the initial projection of a narrower student into the teacher's width.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Sequence
from pathlib import Path

import torch

from ..models import load_classifier
from ..utils.atomic import atomic_dir
from .shrink_config import ShrinkConfig


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


# Tokens per calibration batch (rows x the longest): 8 rows of 2,048 tokens in one batch of a 4B model hold
# about 4.5 GB of fp32 attention scores on CPU, over half the model's bf16 bytes again (bench/rehearsal.py).
CALIBRATION_BATCH_TOKENS = 4096


@torch.no_grad()
def calibrate(model, tokenizer, calibration, *, template=None, batch_size: int = 8, width: bool = False):
    """One pass of ``calibration`` rows through ``model``: block influence per layer, and (``width``) the
    Minitron width importance (:class:`kdq.distill.width.WidthImportance`).

    ``BI_i = 1 − mean cos(input_i, output_i)`` per decoder layer, over real tokens. Rows are
    rendered with ``template`` (default: the template recorded in the model's config).
    Returns ``(scores, importance or None)``.
    """
    from contextlib import nullcontext

    from ..data import encode, load_arena
    from ..models import template_of
    from ..runtime.batching import length_sorted_batches, pad_batch
    from ..runtime.template import TemplateConfig
    from .width import WidthMeter

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
    meter = WidthMeter(model) if width else None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with meter or nullcontext():
            lengths = [len(s) for s in seqs]
            for batch in length_sorted_batches(lengths, batch_size, max_batch_tokens=CALIBRATION_BATCH_TOKENS):
                ids, mask = pad_batch([seqs[i] for i in batch], tokenizer.pad_token_id)
                if meter is not None:
                    meter.set_mask(mask)
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                m = mask.to(device).float()
                for i in range(n):
                    sums[i] += float(((1.0 - captured[i]) * m).sum())
                count += float(m.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return (sums / max(count, 1.0)).tolist(), (meter.result() if meter is not None else None)


def block_influence(model, tokenizer, calibration, *, template=None, batch_size: int = 8) -> list:
    """``BI_i`` per decoder layer (see :func:`calibrate`)."""
    return calibrate(model, tokenizer, calibration, template=template, batch_size=batch_size)[0]


def shrink(
    model,
    out_dir=None,
    config: ShrinkConfig | None = None,
    *,
    calibration=None,
    tokenizer=None,
    overwrite: bool = False,
    verbose: bool = True,
    **moved,
):
    """Return (or save) a copy of ``model`` with fewer decoder layers and/or narrower ones.

    ``kdq.shrink(teacher, "runs/init", ShrinkConfig(num_layers=16, hidden_size=1536), calibration=rows)``.

    Args:
        model: folder or ``*ForSequenceClassification`` (Llama-style). Never modified.
        out_dir: when given, the student is saved there (atomically, with the tokenizer), reloaded
            with stock transformers and checked against the model in memory on calibration rows
            (``config.reload_tolerance``); the folder path is returned. Otherwise the model object is returned.
        config: :class:`~kdq.distill.shrink_config.ShrinkConfig`: the layers to keep (``keep``, or
            ``strategy`` with ``every`` / ``num_layers``), the widths (``hidden_size``,
            ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``: Minitron activation
            importance, :mod:`kdq.distill.width`) and the calibration pass. Default: ``ShrinkConfig()``.
        calibration: arena rows for block influence and width importance (a few hundred are plenty).
        tokenizer: tokenizer object or folder, when ``model`` has none saved with it.
        overwrite: replace an existing ``out_dir``.
        verbose: print what was kept.
        **moved: refused, never applied: it exists only to name the fix for the older spelling. The options live
            in ``config``: ``kdq.shrink(m, every=2)`` is now ``kdq.shrink(m, config=ShrinkConfig(every=2))``
            (with a config given, ``config=config.replace(every=2)``). Any keyword here raises ``TypeError``.
    Returns:
        the student (``*ForSequenceClassification``) or its folder. ``config.kdq_shrink`` records
        the source, the strategy, the kept-layer map (``kept_layers``: the teacher layer of each
        student layer), the block-influence scores and, when narrowed, ``width``: the source
        sizes, the new ones and the kept channels, neurons, query heads and KV heads.
    Raises:
        TypeError: any keyword beyond the ones above: a ShrinkConfig field (the message gives the
            ``config=ShrinkConfig(...)`` call to use instead) or an unknown name (the message lists both).
        ValueError: ``config`` that is no ShrinkConfig, missing calibration rows, bad layer indices, a
        width that cannot be honoured (the message names the nearest valid sizes), or width pruning of a model
        family it is not proven for (:data:`kdq.distill.width.WIDTH_FAMILIES`), before the calibration pass.
        CheckFailed: the saved folder does not reload to the student in memory (nothing is written).
    """
    from .width import check_width

    cfg = _shrink_config(config, moved)
    _require_calibration(cfg, calibration)
    calibration = _first_rows(calibration, cfg.calibration_rows)
    # Copy an object before load_classifier touches it (it merges adapters and sets pad ids in place).
    loaded = load_classifier(
        model if isinstance(model, (str, Path)) else copy.deepcopy(model), tokenizer=tokenizer, merge_adapter=True
    )
    n = len(_decoder_layers(loaded.model)[1])
    sizes = check_width(loaded.model.config, **cfg.widths) if cfg.narrows else None  # fail before the calibration pass
    scores, importance = _measure(loaded, cfg, calibration)
    keep, strategy = choose_layers(cfg, n, scores)
    record = {
        "source": loaded.source or loaded.fingerprint,
        "source_layers": n,
        "kept_layers": keep,
        "strategy": strategy,
        "scores": [round(x, 6) for x in scores] if scores else None,
    }
    student = _drop_layers(loaded.model, keep)
    if sizes is not None:
        # the source (every layer, dropped ones included) is no longer needed: saving and the reload check
        # must not hold it beside the student (a 4B source is 7.9 GB)
        loaded.model = None
        student, record["width"] = _narrow(student, keep, importance, sizes)
    student.config.kdq_shrink = record
    if verbose:
        print(f"kdq shrink: {_summary(record, sizes)}")
    if out_dir is None:
        return student
    return _save(student, loaded.tokenizer, Path(out_dir), calibration, cfg, overwrite, source=model)


def _measure(loaded, cfg: ShrinkConfig, calibration) -> tuple:
    """``(block influence per layer, WidthImportance)`` from one calibration pass, each ``None`` when not
    asked for (uniform depth without width pruning) or without calibration rows."""
    if calibration is None or not (cfg.strategy == "block-influence" or cfg.narrows):
        return None, None
    return calibrate(
        loaded.model,
        loaded.tokenizer,
        calibration,
        template=cfg.template,
        batch_size=cfg.calibration_batch_size,
        width=cfg.narrows,
    )


def _save(student, tokenizer, out_dir: Path, calibration, cfg: ShrinkConfig, overwrite: bool, *, source) -> Path:
    """Save the student and its tokenizer atomically, once the folder reloads to it (:func:`_check_reload`), with
    the record of the rows its ``source`` was trained on (its weights are the source's)."""
    from ..data import carry_group_keys

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        student.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        carry_group_keys(source, tmp)
        _check_reload(student, tokenizer, tmp, calibration, atol=cfg.reload_tolerance)
    return out_dir


def _shrink_config(config, moved: dict) -> ShrinkConfig:
    """``config`` (default ``ShrinkConfig()``), checked. ``moved``: the keywords :func:`shrink` was called with
    beyond its own; any of them is refused with ``TypeError`` (never applied): a ShrinkConfig field names the
    ``config=`` call that replaces it, another name lists shrink's keywords and the fields."""
    if moved:
        names = [f.name for f in dataclasses.fields(ShrinkConfig)]
        fields = {k: v for k, v in moved.items() if k in names}
        unknown = sorted(set(moved) - set(fields))
        if unknown:
            own = [n for n, p in inspect.signature(shrink).parameters.items() if p.kind is p.KEYWORD_ONLY]
            raise TypeError(
                f"kdq.shrink() got an unexpected keyword {unknown}: its keywords are model, out_dir, config, {own}; "
                f"its options are ShrinkConfig's fields, given as config=ShrinkConfig(...): {names}"
            )
        given = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        target = f"config=config.replace({given})" if config is not None else f"config=ShrinkConfig({given})"
        raise TypeError(
            f"kdq.shrink(..., {given}) moved to kdq.shrink(..., {target}): the options are ShrinkConfig fields "
            "(from kdq import ShrinkConfig)."
        )
    if config is not None and not isinstance(config, ShrinkConfig):
        raise ValueError(
            f"shrink: config must be a kdq.ShrinkConfig, got {type(config).__name__}; "
            "e.g. ShrinkConfig(num_layers=16, hidden_size=1536)."
        )
    return config or ShrinkConfig()


def _require_calibration(cfg: ShrinkConfig, calibration) -> None:
    """Block influence (without ``keep``) and width importance are measured on calibration rows."""
    if calibration is None and ((cfg.strategy == "block-influence" and cfg.keep is None) or cfg.narrows):
        what = "width importance" if cfg.narrows else "block influence"
        raise ValueError(
            f"shrink: {what} is measured on calibration rows: pass calibration=rows (a few hundred training "
            "rows)" + ("." if cfg.narrows else ", or use strategy='uniform'.")
        )


def _first_rows(calibration, limit: int | None):
    """The first ``limit`` calibration rows (all of them when ``limit`` is ``None``)."""
    if calibration is None or limit is None:
        return calibration
    from ..data import load_arena

    rows = load_arena(calibration)
    return rows.select(range(min(limit, len(rows))))


def choose_layers(config: ShrinkConfig, num_layers: int, scores=None) -> tuple:
    """``(kept layer indices, strategy name)`` for a model of ``num_layers`` decoder layers: ``config.keep``
    (``"explicit"``), else ``config.strategy`` with ``num_layers`` / ``every`` (``scores``: the block
    influence per layer, for ``"block-influence"``). Sorted. ``ValueError`` for an index out of range or repeated.
    """
    n = num_layers
    if config.keep is not None:
        keep, strategy = list(config.keep), "explicit"
    elif config.strategy == "uniform":
        count = config.num_layers
        keep = (
            select_layers(n, config.every)
            if count is None
            else sorted({round(k * (n - 1) / max(count - 1, 1)) for k in range(count)})
        )
        strategy = config.strategy
    else:
        count = config.num_layers if config.num_layers is not None else len(select_layers(n, config.every))
        keep, strategy = select_by_influence(scores, count), config.strategy
    bad = [i for i in keep if not 0 <= i < n]
    if bad or not keep or len(set(keep)) != len(keep):
        raise ValueError(f"keep={keep}: layer indices must be unique and in [0, {n - 1}].")
    return sorted(keep), strategy


def _drop_layers(model, keep: list):
    """``model`` (changed in place) with only the decoder layers ``keep``, renumbered, and its config to match."""
    base, layers = _decoder_layers(model)
    base.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(base.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx
    cfg = model.config
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    return model


def _narrow(model, keep: list, importance, sizes: dict) -> tuple:
    """``(narrowed copy of model, its kdq_shrink["width"] record)``; ``importance`` was measured on every source
    layer, so its per-layer rows are cut to ``keep`` first."""
    from .width import WIDTH_FIELDS, plan_width, prune_width

    source_sizes = {k: int(getattr(model.config, k)) for k in WIDTH_FIELDS}
    kept_rows = torch.tensor(keep, dtype=torch.long)
    importance.neurons, importance.heads = importance.neurons[kept_rows], importance.heads[kept_rows]
    plan = plan_width(model.config, importance, sizes)
    return prune_width(model, plan), plan.record(source_sizes)


def _summary(record: dict, sizes: dict | None) -> str:
    """One line: the layers kept and, when narrowed, each width from the source's to the student's."""
    keep = record["kept_layers"]
    what = f"kept {len(keep)} of {record['source_layers']} layers ({record['strategy']}): {keep}"
    if sizes is not None:
        what += "; width " + ", ".join(f"{k} {record['width']['source'][k]}→{v}" for k, v in sizes.items())
    return what


def _check_reload(model, tokenizer, folder: Path, calibration, *, atol: float) -> None:
    """The saved folder, loaded the stock way, scores probe rows as the model in memory does."""
    from transformers import AutoModelForSequenceClassification

    from ..data import encode, load_arena
    from ..data.probe import make_arena_rows
    from ..models import template_of
    from ..runtime.batching import predict_logits
    from ..runtime.template import TemplateConfig
    from ..utils.errors import CheckFailed

    template = template_of(model) or TemplateConfig()
    rows = load_arena(calibration) if calibration is not None else load_arena(make_arena_rows(4, seed=0, max_words=60))
    seqs = encode(rows.select(range(min(4, len(rows)))), tokenizer, template, desc="render probe rows")["input_ids"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=next(model.parameters()).dtype)
    pad = tokenizer.pad_token_id
    diff = float((predict_logits(reloaded, seqs, pad) - predict_logits(model, seqs, pad)).abs().max())
    if not diff <= atol:
        raise CheckFailed(
            f"shrink: the saved student reloads with stock transformers to logits {diff:.3g} away from the model in "
            f"memory (tolerance {atol:g}); nothing was written."
        )
