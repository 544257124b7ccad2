"""kdq.export: pack a classifier into a self-contained Kaggle dataset folder."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..data.probe import arena_like_turns, probe_turns
from ..quant_methods import prepare_to_load, quantization_config_of, runtime_settings
from ..runtime.constants import (
    DEFAULT_TTA_FRACTION,
    FORMAT_KEY,
    KAGGLE_METADATA_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    QUANTIZE_REPORT_FILE,
    SCHEME_KEY,
    SETTINGS_FILE,
    SETTINGS_FORMAT,
    TEMPLATE_KEY,
    WHEELS_DIR,
    scheme_of_config,
)
from ..utils.atomic import atomic_dir
from ..utils.errors import CheckFailed
from ..utils.jsonable import jsonable
from ..utils.versions import library_versions
from .config import ExportConfig, dataset_metadata_problems, describe_rows
from .files import CARD_FILE, copy_model_files, list_files
from .manifest import metrics_record, utc_now, write_json
from .script import SCRIPT_NAME, copy_runtime, load_predict_module, render_script
from .verify import VerificationError


class ExportError(CheckFailed):
    """The exported folder would not reproduce the model; nothing was written."""


@dataclass
class _Staged:
    """The model files copied into the export folder, and the in-memory model they must match."""

    loaded: object  # kdq.models.LoadedModel: the reference for the probe
    source: str | None
    fingerprint: str
    weights_sha256: dict
    fp16_check: dict | None = None  # fp16 vs fp32 on the check rows, for unquantized weights
    store_fp16: bool = False  # rewrite the weights in fp16 once the model is dropped (_store_fp16)


@dataclass
class _Built:
    """The staged folder, once the model is dropped: what the later steps of :func:`export` read."""

    staged: _Staged
    template: object  # the TemplateConfig rows are rendered with
    scheme: object  # the LabelScheme the model was trained for
    quant_method: str | None  # config.json's quantization_config quant_method (None: not quantized)
    expected: _Expected  # the probe rows and kdq's scoring of them on the source model


@dataclass
class _Published:
    """What the card and the manifest publish besides the folder's own facts."""

    probe: dict  # the probe batch predict.py scored (:func:`_probe`)
    wheels: dict | None  # the wheels/ record, when config.wheels
    metrics: dict | None  # kdq.evaluate's Metrics.to_dict()
    budget: dict | None  # its budget verdict
    table_md: str | None  # the trade-off table
    sources: dict | None = None  # name -> {"path", "fingerprint"} or a fingerprint, public paths only
    configs: dict | None = None  # the configs recorded (ExportConfig.configs, kdq.quantize's report)


@dataclass
class CheckRows:
    """The rows the fp16 check computes, in order: the probe rows, kdq's arena-like rows, the user's."""

    ids: list
    rows: list  # (prompt, response_a, response_b) turn lists, as predict.py's read_rows gives them
    origins: list  # per row: "probe", "arena-like" or "check_rows"
    record: dict  # how many of each, and where the user's came from (for the manifest), not the rows


def export(model, out_dir, config: ExportConfig, *, metrics=None, table_md: str | None = None, tokenizer=None) -> Path:
    """Write a Kaggle dataset folder for ``model`` at ``out_dir`` and return its path.

    Args:
        model: a model folder (full model, quantized model, or PEFT adapter), a
            ``transformers`` classifier object, or a :class:`kdq.models.LoadedModel`.
        out_dir: the folder to create; an existing one is an error unless
            ``config.overwrite``. Written in a temporary sibling and renamed into place, so
            an error or Ctrl-C leaves nothing behind.
        config: :class:`ExportConfig`.
        metrics: a ``kdq.Metrics`` (or its ``to_dict()``) from ``kdq.evaluate``; recorded with
            its budget verdict in the manifest and the model card.
        table_md: the trade-off table (markdown, e.g. from ``kdq.compare``'s report.md) for the card.
        tokenizer: tokenizer object or folder, when ``model`` has none saved with it.

    The folder holds the weights (safetensors), config and tokenizer; ``predict.py``;
    ``kdq-predict.json``; ``README.md``; ``dataset-metadata.json``; optional ``wheels/``; and
    ``kdq-manifest.json`` with every file's sha256. For unquantized weights, the fp16 check
    (:func:`_fp16_check`) computes the probe rows, kdq's arena-like rows and ``config.check_rows``
    in fp16 and fp32 first, and refuses or records fp32 compute (``config.fp16_fallback``) when fp16
    gets a row wrong. Before the rename, the exported predict.py scores a probe batch from the
    folder and must match kdq's pipeline on the source model within ``config.probe_atol``.
    """
    if not isinstance(config, ExportConfig):
        raise ValueError(f"config must be a kdq.ExportConfig, got {type(config).__name__}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not config.overwrite:  # fail before loading anything
        raise FileExistsError(f"{out_dir} already exists; pass ExportConfig(overwrite=True) or choose another folder.")
    metrics_dict, budget = metrics_record(metrics)
    from tqdm.auto import tqdm

    from ..costs.budget import load_budget

    load_budget(config.budget)  # a bad profile fails now, not after staging the weights
    check = fp16_check_rows(config)  # so do unreadable check_rows

    steps = iter(["stage model files", "write predict.py", "wheels", "probe batch", "card and manifest"])
    bar = tqdm(total=5, desc="export", unit="step")
    try:
        with atomic_dir(out_dir, overwrite=config.overwrite) as tmp:
            bar.set_postfix_str(next(steps))
            built = _stage(model, tmp, config, tokenizer, check)
            _next_step(bar, steps)
            _write_script(tmp, config, built)
            _next_step(bar, steps)
            wheels = _wheels(tmp, config, built.quant_method) if config.wheels else None
            _next_step(bar, steps)
            probe = _probe(tmp, built.expected, config)
            _next_step(bar, steps)
            _write_card_and_manifest(tmp, config, built, _Published(probe, wheels, metrics_dict, budget, table_md))
            bar.update(1)
    finally:
        bar.close()
    return out_dir


def _next_step(bar, steps) -> None:
    """One step of :func:`export` done; name the next on the bar."""
    bar.update(1)
    bar.set_postfix_str(next(steps))


def _stage(model, tmp: Path, config: ExportConfig, tokenizer, check: CheckRows) -> _Built:
    """Stage the model's files in ``tmp``; for unquantized weights, the fp16 check; the exported config.json;
    kdq's scoring of the probe rows on the source. Then the model goes (predict.py loads its own copy from the
    folder, and two copies of a 4B model do not fit a notebook's host RAM) and, where the fp16 check asked for
    it, the weights are rewritten in fp16 one shard at a time."""
    from ..runtime.dtypes import restored_cast

    staged = _stage_files(model, tmp, tokenizer)
    with restored_cast(staged.loaded.model):  # a caller's model object computes as before afterwards
        template = _resolve_template(config, staged.loaded.model)
        infer = inference_template(config, template)  # what predict.py renders rows with (ExportConfig.max_length)
        if quantization_config_of(tmp) is None:  # quantized folders stay byte for byte
            staged = _fp16_check(staged, tmp, config, infer, check)
        scheme = scheme_of_config(staged.loaded.model.config)  # the label scheme the model was trained for
        quant_method = _finish_config_json(tmp, template, staged.loaded.tokenizer, scheme)
        expected = _expected_probe(staged.loaded, config, infer)
    staged.loaded = None
    gc.collect()
    _store_fp16(staged, tmp)  # with no model in memory: the host holds one shard at a time
    return _Built(staged, template, scheme, quant_method, expected)


def _write_script(tmp: Path, config: ExportConfig, built: _Built) -> None:
    """``kdq-predict.json``, ``predict.py`` and the ``kdq_runtime/`` package it imports."""
    from .. import __version__ as kdq_version

    write_json(
        tmp / SETTINGS_FILE, settings_record(config, quantization_config_of(tmp), fp16_check=built.staged.fp16_check)
    )
    script = render_script(
        title=config.title,
        slug=config.slug,
        kdq_version=kdq_version,
        quant_method=built.quant_method,
        competition=built.scheme.competition,
    )
    (tmp / SCRIPT_NAME).write_text(script, encoding="utf-8")
    copy_runtime(tmp)


# kdq.export is this function once kdq/__init__ binds it, so the documented spelling
# ``kdq.export.VerificationError`` needs the class on the function too.
export.VerificationError = VerificationError
export.ExportError = ExportError


def settings_record(config: ExportConfig, quantization_config: dict | None, *, fp16_check: dict | None = None) -> dict:
    """``kdq-predict.json``: predict.py's defaults, and what loading the weights needs, asked of the
    method registry (:func:`kdq.quant_methods.runtime_settings`) for the folder's
    ``quantization_config`` (``None``: not quantized): the modules transformers imports (checked up
    front, so a missing backend fails in seconds with the offline install line, not mid-load), the
    packages whose versions predict.py compares, and per device type the environment defaults and
    ``quantization_config`` overrides predict.py applies. The standalone runtime cannot import the
    registry, so this record is how a method registered later reaches it. ``max_length``: the inference
    max_length (``config.max_length``; ``None``: the training template's, in config.json). ``budget``: the time limit
    and hidden-test rows of ``config.budget``'s profile, which predict.py's ETA checks (one source:
    the profile JSON). ``cuda_compute_dtype``: what predict.py loads and computes the model in on
    CUDA, ``"float16"`` unless the fp16 check (``fp16_check``, from :func:`_fp16_check`) found rows
    that fp16 gets wrong and ``config.fp16_fallback`` is ``"fp32-compute"``: then ``"float32"``,
    with ``cuda_compute_dtype_reason`` (predict.py prints it)."""
    from ..costs.budget import load_budget

    profile = load_budget(config.budget)
    cuda_dtype = (fp16_check or {}).get("cuda_compute_dtype") or "float16"
    reason = None
    if cuda_dtype == "float32":
        first = fp16_check["first_bad_row"]
        reason = (
            f"kdq export's fp16 check: fp16 compute was non-finite or off by more than {fp16_check['atol']:g} "
            f"on {fp16_check['bad_rows']} of {fp16_check['rows']} rows (first: id {first['id']!r}, "
            f"{first['excerpt']!r}); details in {MANIFEST_FILE} fp16_check"
        )
    return {
        FORMAT_KEY: SETTINGS_FORMAT,
        "tta": config.tta,
        "tta_fraction": config.tta_fraction,
        "batch_size": config.batch_size,
        "max_batch_tokens": config.max_batch_tokens,
        "max_length": config.max_length,  # the inference max_length; null: the training template's
        **runtime_settings(quantization_config),
        "budget": {"name": profile.name, "time_limit_hours": profile.time_limit_hours, "rows": profile.rows},
        "cuda_compute_dtype": cuda_dtype,
        "cuda_compute_dtype_reason": reason,
    }


def fp16_check_rows(config: ExportConfig) -> CheckRows:
    """The rows the fp16 check computes: the ``config.probe_rows`` probe rows, kdq's arena-like rows
    (:func:`kdq.data.probe.arena_like_rows`: code, maths, markup, long numbers, non-English text) and,
    when ``config.check_rows`` is given, up to ``config.check_rows_max`` of those rows, evenly spaced
    (loaded with :func:`kdq.load_arena`, so a bad file fails here, before anything is staged)."""
    ids, rows = probe_turns(config.probe_rows)
    origins = ["probe"] * len(ids)
    like_ids, like_rows = arena_like_turns(config.arena_like_rows) if config.arena_like_rows else ([], [])
    ids, rows, origins = ids + like_ids, rows + like_rows, origins + ["arena-like"] * len(like_ids)
    user = None
    if config.check_rows is not None:
        from ..data import load_arena

        try:
            data = load_arena(config.check_rows, unlabelled=True)  # computed, never scored
        except ValueError as err:
            raise ValueError(f"ExportConfig.check_rows: {err}") from None
        n, k = len(data), min(len(data), config.check_rows_max)
        picked = data.select(sorted({i * n // k for i in range(k)}))
        ids += list(picked["id"])
        rows += [tuple(r[c] for c in ("prompt", "response_a", "response_b")) for r in picked]
        origins += ["check_rows"] * len(picked)
        user = {"source": describe_rows(config.check_rows), "rows": len(picked), "of": n}
    record = {"probe": config.probe_rows, "arena_like": len(like_ids), "check_rows": user}
    return CheckRows(ids, rows, origins, record)


def _excerpt(row, width: int = 60) -> str:
    """The start of a row's first non-empty turn (prompt first), on one line, for an error message."""
    text = next((t for part in row for t in part if t.strip()), "")
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _json_float(x):
    """``x`` as a float, ``None`` when it is not finite (JSON has no inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _row_diffs(got, ref):
    """Per row: max |Δp| of ``got`` from ``ref``, ``inf`` where ``got`` is not finite."""
    import torch

    diff = (got - ref).abs().amax(dim=-1)
    return torch.where(torch.isfinite(got).all(dim=-1), diff, torch.full_like(diff, float("inf")))


def _fp16_check(staged: _Staged, tmp: Path, config: ExportConfig, template, check: CheckRows) -> _Staged:
    """Compute the check rows in fp16 and in fp32; store the weights in fp16 when
    ``config.weights_dtype`` says so (a T4 has no bf16; half the bytes of fp32).

    A T4 computes an unquantized folder in fp16, whatever its weights are stored as, and activations
    overflow fp16 (65504) on particular inputs only: so the check runs on rows that look like the arena
    (:func:`fp16_check_rows`), not just the probe's lowercase words. Every row must be finite in fp16
    and within ``config.fp16_atol`` of fp32. When one is not, ``config.fp16_fallback="refuse"`` raises
    :class:`ExportError` naming the first such row (id, origin, excerpt) and the options;
    ``"fp32-compute"`` records ``cuda_compute_dtype="float32"`` (:func:`settings_record`), so predict.py
    loads and computes the model in fp32 on CUDA, after checking that fp32 compute on the stored weights
    reproduces the source within ``fp16_atol``.

    One copy of the model is held throughout, in the dtype it was loaded in: fp32 and fp16 compute are
    layerwise casts of it (:func:`kdq.runtime.dtypes.compute_in`), never a second, upcast copy (a 4B model:
    7.9 GB in bf16, 15.8 GB more in fp32). The weights are stored in fp16 tensor by tensor once the model
    is dropped (``store_fp16`` on the returned :class:`_Staged`; :func:`_store_fp16`), and the record's
    ``conversion`` then says what that changed. On return the model
    computes what predict.py computes from the stored files on CPU: fp32, from the fp16-rounded weights when
    they are converted; the probe compares against that.
    """
    import torch

    from ..runtime.dtypes import compute_in, stored_dtype

    model = staged.loaded.model
    store_fp16 = config.weights_dtype == "float16" and stored_dtype(model) != torch.float16
    scorer = _CheckScorer(staged.loaded, check, template, config)
    ref = _fp32_reference(scorer)  # the source's weights, computed in fp32
    diffs = _row_diffs(_half_probs(model, scorer.probs), ref)  # what a T4 computes: fp16 weights, fp16 activations
    bad = (~(diffs <= config.fp16_atol)).nonzero().flatten().tolist()
    record = _fp16_record(config, check, diffs, bad, _half_kind(model))
    found = _fp16_finding(config, check, diffs, bad)  # raises when fp16_fallback="refuse" and a row is bad
    via = torch.float16 if store_fp16 else None  # predict.py computes the fp16-rounded weights
    if found and store_fp16:  # fp32 compute must survive the fp16 rounding
        record["fp32_compute_max_abs_diff_vs_source"] = _fp32_drift(scorer, ref, found)
    if found:
        warnings.warn(
            f"{found} kdq-predict.json records cuda_compute_dtype='float32' (ExportConfig.fp16_fallback="
            "'fp32-compute'): predict.py will load and compute this model in fp32 on CUDA, several times "
            "slower on a T4 than the fp16 speed the budget verdict assumes.",
            stacklevel=4,
        )
    compute_in(model, torch.float32, via)  # what predict.py computes from the stored files on CPU
    return dataclasses.replace(staged, fp16_check=record, store_fp16=store_fp16)


@dataclass
class _CheckScorer:
    """kdq's scoring of the fp16 check rows on the staged model, in a chosen compute dtype."""

    loaded: object  # kdq.models.LoadedModel
    check: CheckRows
    template: object
    config: ExportConfig

    def probs(self, dtype, via=None):
        """``(N, C)`` probabilities computed in ``dtype`` (weights rounded through ``via`` first, when given)."""
        from ..runtime.dtypes import compute_in

        compute_in(self.loaded.model, dtype, via)
        c = self.config
        return kdq_probs(
            self.loaded, self.check.rows, self.template, tta=c.tta, batch_size=c.batch_size, tta_fraction=c.tta_fraction
        )


def _fp32_reference(scorer: _CheckScorer):
    """The check rows computed in fp32 from the held weights; :class:`ExportError` when any is not finite."""
    import torch

    ref = scorer.probs(torch.float32)
    broken = (~torch.isfinite(ref).all(dim=-1)).nonzero().flatten().tolist()
    if broken:
        check, i = scorer.check, broken[0]
        raise ExportError(
            f"fp16 check: the model's probabilities are not finite even in fp32 on {len(broken)} of "
            f"{len(check.ids)} rows, the first id {check.ids[i]!r} ({check.origins[i]}: {_excerpt(check.rows[i])!r}); "
            "no compute dtype fixes that: check the model. Nothing was written."
        )
    return ref


def _fp16_record(config: ExportConfig, check: CheckRows, diffs, bad: list, fp16_compute: str) -> dict:
    """The manifest's ``fp16_check``: how far fp16 compute is from fp32 on the check rows, and the first bad row."""
    record = {
        "max_abs_diff_vs_fp32": _json_float(diffs.max()),  # null: some row is not finite in fp16
        "atol": config.fp16_atol,
        "rows": len(check.ids),
        "row_sources": check.record,
        "bad_rows": len(bad),
        "first_bad_row": None,
        "fallback": config.fp16_fallback,
        "cuda_compute_dtype": "float32" if bad else "float16",
        "reference": "fp32 compute of the held weights, one module at a time",
        "fp16_compute": fp16_compute,
        "conversion": None,  # what storing the weights in fp16 changed, once it has (_store_fp16)
    }
    if bad:
        i = bad[0]
        d = float(diffs[i])
        record["first_bad_row"] = {
            "id": check.ids[i],
            "origin": check.origins[i],
            "excerpt": _excerpt(check.rows[i]),
            "max_abs_diff_vs_fp32": _json_float(d),
            "finite_in_fp16": d != float("inf"),
        }
    return record


def _fp16_finding(config: ExportConfig, check: CheckRows, diffs, bad: list) -> str | None:
    """What the fp16 check found (``None``: every row fine); :class:`ExportError` with the options when
    ``config.fp16_fallback`` is ``"refuse"``."""
    if not bad:
        return None
    i = bad[0]
    d = float(diffs[i])
    what = "not finite in fp16 (an fp16 overflow)" if d == float("inf") else f"{d:.3g} away from fp32"
    found = (
        f"fp16 check: {len(bad)} of {len(check.ids)} rows give probabilities that are not finite in fp16 "
        f"or off by more than ExportConfig.fp16_atol={config.fp16_atol:g} from fp32; the first is id "
        f"{check.ids[i]!r} ({check.origins[i]} row: {_excerpt(check.rows[i])!r}), {what}."
    )
    if config.fp16_fallback == "refuse":
        raise ExportError(
            f"{found} A T4 computes this folder in fp16, so the notebook would give such rows NaN or wrong "
            "probabilities. Options: ExportConfig(fp16_fallback='fp32-compute') records in kdq-predict.json "
            "that predict.py loads and computes the model in fp32 on CUDA (correct, several times slower on "
            "a T4: watch its ETA); add weights_dtype='float32' to keep the weights exact as well (fp32 "
            "weights alone do not help: predict.py computes in fp16 on CUDA whatever is stored); or a "
            "quantized variant (kdq.quantize(..., QuantConfig.from_name('gptq-8'))), whose activations are "
            "fp16 on CUDA too, so check it on these rows. Nothing was written."
        )
    return found


def _fp32_drift(scorer: _CheckScorer, ref, found: str) -> float:
    """max |Δp| of fp32 compute on the fp16-rounded weights from the source (``ref``); :class:`ExportError`
    beyond ``fp16_atol``, since then fp32 compute does not rescue the stored fp16 weights."""
    import torch

    atol = scorer.config.fp16_atol
    drift = float(_row_diffs(scorer.probs(torch.float32, torch.float16), ref).max())
    if not drift <= atol:
        raise ExportError(
            f"{found} With fp16_fallback='fp32-compute', fp32 compute on the fp16-rounded weights is "
            f"still {drift:.3g} away from the source (fp16_atol={atol:g}): export with "
            "ExportConfig(weights_dtype='float32', fp16_fallback='fp32-compute'). Nothing was written."
        )
    return drift


_HEAD = {"head": "require", "role": "the model to export"}  # a head of another size, or none saved, is refused


def _store_fp16(staged: _Staged, tmp: Path) -> None:
    """Rewrite the staged weights in fp16 where the fp16 check asked for it, recording what changed
    (:func:`kdq.export.fp16.convert_folder`)."""
    from .fp16 import convert_folder

    if staged.store_fp16:
        staged.fp16_check["conversion"] = convert_folder(tmp)


def _half_kind(model) -> str:
    return "fp16" if next(model.parameters()).device.type == "cuda" else "emulated"


def _half_probs(model, probs):
    """The check rows' probabilities as fp16 computes them: in fp16 on CUDA; on CPU emulated, fp16-rounded
    weights and fp16 rounding at every module boundary over fp32 kernels (:class:`kdq.runtime.dtypes.HalfRounding`:
    fp16's range and rounding, 3-4x faster than fp16 matmuls on a CPU without fp16 units)."""
    import torch

    from ..runtime.dtypes import HalfRounding

    if _half_kind(model) == "fp16":
        return probs(torch.float16)
    with HalfRounding(model):
        return probs(torch.float32, torch.float16)


def _stage_files(model, tmp: Path, tokenizer) -> _Staged:
    """Copy (or save) the files the notebook needs into ``tmp``; load the reference model."""
    import torch

    from ..models import LoadedModel, fingerprint_path, is_adapter_dir, load_classifier, load_tokenizer
    from .files import model_files, model_role, sha256_file

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_dir():
            raise ValueError(f"model folder {str(path)!r} does not exist; pass a saved model folder or a model object.")
        has_safetensors = any(p.suffix == ".safetensors" for p in model_files(path))
        if has_safetensors and not is_adapter_dir(path):
            # A complete folder: copy its bytes (no re-save that could alter a quantized layout)
            # and load it the way predict.py will on CPU, in fp32, as the reference.
            has_tokenizer = any(model_role(p.name) == "tokenizer" for p in model_files(path))
            if tokenizer is None and not has_tokenizer:
                raise ValueError(
                    f"model folder {str(path)!r} has no tokenizer files; pass tokenizer=... "
                    "(an object or a folder) so the notebook can render rows."
                )
            loaded = load_classifier(path, tokenizer=tokenizer, dtype=torch.float32, device="cpu", frozen=True, **_HEAD)
            # An explicit tokenizer replaces the folder's, so the probe and the notebook use the same one.
            copy_model_files(path, tmp, skip_roles=("tokenizer",) if tokenizer is not None else ())
            if tokenizer is not None:
                _copy_saved_tokenizer(loaded.tokenizer, tmp)
            weights = {p.name: sha256_file(p) for p in model_files(path) if p.suffix == ".safetensors"}
            return _Staged(loaded, str(path.resolve()), fingerprint_path(path), weights)
    if isinstance(model, LoadedModel):
        loaded = model
        if tokenizer is not None:
            loaded = LoadedModel(
                model.model,
                load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer,
                model.source,
                model.fingerprint,
            )
    else:
        # Adapter folders are merged, .bin folders and model objects re-saved as safetensors.
        loaded = load_classifier(model, tokenizer=tokenizer, **_HEAD)
    with tempfile.TemporaryDirectory(prefix=".kdq-export-save-", dir=tmp.parent) as scratch:
        loaded.model.save_pretrained(scratch)
        copy_model_files(scratch, tmp, skip_roles=("tokenizer",))
    _copy_saved_tokenizer(loaded.tokenizer, tmp)
    weights = {p.name: sha256_file(p) for p in model_files(tmp) if p.suffix == ".safetensors"}
    if not weights:
        raise ExportError(
            f"saving {type(loaded.model).__name__} produced no .safetensors file; the notebook loads safetensors only."
        )
    return _Staged(loaded, loaded.source, loaded.fingerprint, weights)


def _copy_saved_tokenizer(tokenizer, tmp: Path):
    """Save ``tokenizer`` and copy only its tokenizer files into ``tmp``."""
    with tempfile.TemporaryDirectory(prefix=".kdq-export-tok-", dir=tmp.parent) as scratch:
        tokenizer.save_pretrained(scratch)
        if not copy_model_files(scratch, tmp, skip_roles=("weights", "config", "quantization")):
            raise ExportError(f"saving the tokenizer ({type(tokenizer).__name__}) produced no tokenizer files.")


def _resolve_template(config: ExportConfig, model):
    from ..models import template_of
    from ..runtime.template import TemplateConfig

    recorded = template_of(model)
    if config.template is not None and recorded is not None and config.template != recorded:
        raise ValueError(
            f"ExportConfig.template={config.template} differs from the template recorded in the model "
            f"(config.json {TEMPLATE_KEY}={recorded}); the notebook must render rows as training did. "
            "Drop ExportConfig.template to use the recorded one."
        )
    if config.template is None and recorded is None:
        warnings.warn(
            f"the model records no row template (config.json {TEMPLATE_KEY!r}); exporting with the default "
            f"{TemplateConfig()}. Pass ExportConfig(template=...) if it was trained otherwise.",
            stacklevel=4,
        )
    return config.template or recorded or TemplateConfig()


def inference_template(config: ExportConfig, template):
    """The template predict.py renders rows with: the training ``template`` at ``config.max_length`` when that is
    set (kdq-predict.json ``max_length``), else ``template`` itself."""
    from ..runtime.predict import at_max_length  # predict.py's own rule, so the export checks what it will run

    return at_max_length(template, config.max_length, "ExportConfig.max_length")


def _finish_config_json(tmp: Path, template, tokenizer, scheme) -> str | None:
    """Record the template, pad id, label scheme and labels in the exported config.json; return the quant method."""
    path = tmp / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg[TEMPLATE_KEY] = template.to_dict()
    # kdq pools the tokenizer's pad id (kdq.models.prepare_classifier); the notebook must too.
    cfg["pad_token_id"] = tokenizer.pad_token_id
    # predict.py writes the submission this scheme asks for (kdq_runtime.constants.scheme_of_config)
    cfg[SCHEME_KEY] = scheme.name
    cfg.setdefault("id2label", {str(k): v for k, v in scheme.id2label.items()})
    cfg.setdefault("label2id", dict(scheme.label2id))
    write_json(path, cfg)
    return (cfg.get("quantization_config") or {}).get("quant_method")


def _wheels(tmp: Path, config: ExportConfig, quant_method):
    from .wheels import WheelError, default_packages, fill_wheels

    roots = config.wheel_packages if config.wheel_packages is not None else default_packages(quant_method)
    try:
        return fill_wheels(
            tmp / WHEELS_DIR,
            roots=roots,
            python_versions=config.wheel_python_versions,
            platforms=config.wheel_platforms,
            with_deps=config.wheel_deps,
            extra_files=config.wheel_files,
        )
    except WheelError as err:
        raise ExportError(f"wheels: {err} Nothing was written.") from err


def kdq_probs(loaded, rows, template, *, tta, batch_size: int, tta_fraction: float = DEFAULT_TTA_FRACTION):
    """kdq's own scoring (the runtime's template, batching and TTA) on the in-memory model:
    probabilities ``(N, C)`` float64. The same :func:`kdq.runtime.tta.score_tta` call as predict.py,
    with predict.py's rendering: swapped rows are rendered only for the rows TTA scores."""
    import torch

    from ..runtime.batching import predict_logits
    from ..runtime.template import render
    from ..runtime.tta import score_tta

    model, tok = loaded.model, loaded.tokenizer
    result = score_tta(
        lambda s: predict_logits(model, s, model.config.pad_token_id, batch_size=batch_size),
        render(tok, rows, template),
        lambda idx: render(tok, [rows[i] for i in idx], template, swap=True),
        mode=tta,
        fraction=tta_fraction,
    )
    return torch.softmax(result.log_probs.double(), dim=-1)


@dataclass
class _Expected:
    """The probe rows and what kdq's pipeline computes on them from the source model."""

    ids: list
    rows: list
    probs: object  # (N, C) float64
    device: str
    dtype: str  # what the source computed in


def _expected_probe(loaded, config: ExportConfig, template) -> _Expected:
    """kdq's scoring of the probe rows on the source model (as :func:`_fp16_check` left it computing)."""
    from ..runtime.dtypes import model_compute_dtype

    first = next(loaded.model.parameters())
    ids, rows = probe_turns(config.probe_rows)
    probs = kdq_probs(
        loaded, rows, template, tta=config.tta, batch_size=config.batch_size, tta_fraction=config.tta_fraction
    )
    dtype = str(model_compute_dtype(loaded.model) or first.dtype).replace("torch.", "")
    return _Expected(ids, rows, probs, str(first.device), dtype)


def _probe(tmp: Path, expected: _Expected, config: ExportConfig) -> dict:
    """Score the probe rows with the exported predict.py on the folder; it must match ``expected``.

    A missing tokenizer file, a lossy re-save (the bnb nf4 reload trap), a wrong dtype or a template
    mismatch shows up here, before the folder exists.
    """
    device, rows = expected.device, expected.rows
    prepare_to_load(tmp, device)  # predict.py loads the folder in this process
    module = load_predict_module(tmp / SCRIPT_NAME)
    got = module.predict_probs(
        tmp, rows, tta=config.tta, batch_size=config.batch_size, devices=[device], tta_fraction=config.tta_fraction
    )
    diff = float((got - expected.probs).abs().max())
    if not diff <= config.probe_atol:
        raise ExportError(
            f"probe batch: the exported folder's predict.py gives probabilities that differ from the "
            f"source model by up to {diff:.3g} (ExportConfig.probe_atol={config.probe_atol:g}) on "
            f"{len(rows)} rows on {device}. The saved files do not reproduce the model; nothing was written. "
            f"(predict.py computes in fp16 on CUDA and fp32 on CPU; the source ran in {expected.dtype}: if that "
            "explains the gap, raise probe_atol.)"
        )
    return {
        "ids": expected.ids,
        "rows": [{"prompt": p, "response_a": a, "response_b": b} for p, a, b in rows],
        "tta": config.tta,
        "tta_fraction": config.tta_fraction,
        "batch_size": config.batch_size,
        "device": device,
        "atol": config.probe_atol,
        "max_abs_diff_vs_source": diff,
        "probs": got.tolist(),
    }


def _write_card_and_manifest(tmp: Path, config: ExportConfig, built: _Built, published: _Published) -> None:
    """README.md, ``dataset-metadata.json`` and ``kdq-manifest.json`` (every file's checksum, last)."""
    from .card import CardFacts, render_card

    staged = built.staged
    sources = {
        "model": {"path": staged.source, "fingerprint": staged.fingerprint, "weights_sha256": staged.weights_sha256}
    }
    configs = jsonable(config.configs)
    _add_quantize_record(staged.source, configs, sources)
    sources.update(_user_sources(config.sources))
    # Published files name sources by folder name and fingerprint, never by this machine's paths.
    sources = public_paths(sources)
    published = dataclasses.replace(
        published, metrics=public_paths(published.metrics), sources=sources, configs=public_paths(configs)
    )
    facts = CardFacts(
        quant_method=built.quant_method,
        template=built.template.to_dict(),
        files=list_files(tmp),
        versions=library_versions(),
        sources={k: (f"{v['path']} ({v['fingerprint']})" if isinstance(v, dict) else v) for k, v in sources.items()},
        scheme=scheme_of_config(json.loads((tmp / "config.json").read_text(encoding="utf-8"))),
        metrics=published.metrics,
        budget=published.budget,
        table_md=published.table_md,
        wheels=published.wheels,
        fp16_check=staged.fp16_check,
    )
    card = render_card(config, facts)
    (tmp / CARD_FILE).write_text(card, encoding="utf-8")
    meta = config.dataset_metadata(description=card)
    problems = dataset_metadata_problems(meta)
    if problems:  # ExportConfig validates the same rules; this guards the file itself
        raise ExportError("dataset-metadata.json would be rejected by Kaggle: " + "; ".join(problems))
    write_json(tmp / KAGGLE_METADATA_FILE, meta)
    manifest = _manifest(tmp, config, facts, staged, published)
    write_json(tmp / MANIFEST_FILE, manifest)


def _manifest(tmp: Path, config: ExportConfig, facts, staged: _Staged, published: _Published) -> dict:
    """``kdq-manifest.json``: the dataset, the export config, the model, its sources and records, every file."""
    cfg = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    scheme = facts.scheme
    manifest = {
        FORMAT_KEY: MANIFEST_FORMAT,
        "created_utc": utc_now(),
        "dataset": config.dataset_metadata(),
        "export_config": public_paths(config.to_dict()),
        "model": {
            "architectures": cfg.get("architectures"),
            "quant_method": facts.quant_method,
            "num_labels": len(cfg.get("id2label") or {}),
            "id2label": cfg.get("id2label"),
            "label_scheme": scheme.name,
            "submission": list(scheme.submission_columns),
            "pad_token_id": cfg.get("pad_token_id"),
            "template": facts.template,
        },
        "sources": published.sources,
        "configs": published.configs,
        "metrics": published.metrics,
        "budget": published.budget,
        "trade_off_table": published.table_md,
        "probe": published.probe,
        "fp16_check": public_paths(staged.fp16_check),
        "wheels": published.wheels,
        "versions": facts.versions,
        "files": list_files(tmp),
    }
    manifest["disk"] = _disk_record(manifest["files"], config)
    return manifest


def _disk_record(files: dict, config: ExportConfig) -> dict:
    """The folder's bytes against the budget profile's dataset limit and working disk (the manifest's ``disk``);
    a warning when it exceeds either."""
    from ..costs.budget import GB, disk_verdict, load_budget

    total = sum(f["size"] for f in files.values())
    verdict = disk_verdict(total, load_budget(config.budget))
    for note in verdict["notes"]:
        warnings.warn(f"kdq.export: {note}.", stacklevel=5)
    return {"bytes": total, "gb": total / GB, **{k: v for k, v in verdict.items() if k != "export_gb"}}


def public_paths(value):
    """``value`` with every absolute local path replaced by its last component (``/home/me/runs/kd`` →
    ``kd``), recursively: a dataset card or manifest must not publish the exporting machine's folders."""
    if isinstance(value, dict):
        return {k: public_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public_paths(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")) and "\n" not in value:
        return Path(value).name or value
    return value


def _add_quantize_record(source, configs: dict, sources: dict) -> None:
    """Provenance from kdq.quantize: its report (minus the bulky probe) and the model it quantized."""
    from ..models import fingerprint_path

    report_path = Path(source, QUANTIZE_REPORT_FILE) if source else None
    if report_path is None or not report_path.is_file():
        return
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        warnings.warn(f"{report_path} is not valid JSON; not recorded in the manifest.", stacklevel=3)
        return
    report.pop("probe", None)
    configs.setdefault("quantize_report", report)
    origin = report.get("source")
    if isinstance(origin, str) and origin not in sources:
        sources["quantized_from"] = {
            "path": origin,
            "fingerprint": fingerprint_path(origin) if Path(origin).is_dir() else None,
        }


def _user_sources(sources) -> dict:
    from ..models import fingerprint_path

    out = {}
    for name, fp in sources.items():
        if fp is None:
            if not Path(name).is_dir():
                raise ValueError(
                    f"ExportConfig.sources[{name!r}] is None but {name!r} is not a folder to fingerprint; "
                    "give its fingerprint as the value."
                )
            fp = fingerprint_path(name)
        out[public_paths(str(name))] = str(fp)
    return out
