"""Store a folder's weights in fp16, one tensor at a time, and say what the conversion changed.

A T4 computes in fp16, so an export stores unquantized weights in fp16 (``ExportConfig.weights_dtype``).
Fine-tuned checkpoints are usually bf16: fp16 holds every bf16 value in its normal range exactly (bf16's 8
significand bits fit in fp16's 11), so what the conversion changes is the values outside that range: over
fp16's maximum (65504, they become inf), under its smallest normal (2^-14 ≈ 6.1e-5, fewer significand bits,
down to zero under 2^-25). An fp32 source is rounded everywhere. :func:`convert_folder` reports which
tensors changed and how, so a probe gap can be told apart from a broken folder.

The tensors are read one at a time from the safetensors files and written into shards of at most
``max_shard_bytes``: host memory holds one shard, never a second copy of the model (a 4B model is 7.9 GB).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime.constants import WEIGHT_INDEX_FILE

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14
# 512 MiB: host memory holds one shard at a time, twice while safetensors serialises it (its bytes, then the file)
SHARD_BYTES = 512 * 1024**2


def _weight_files(folder: Path) -> list:
    index = folder / WEIGHT_INDEX_FILE
    if index.is_file():
        return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    return sorted(folder.glob("*.safetensors"))


def _tensor_stats(name: str, x, y) -> dict:
    """How the fp16 copy ``y`` of tensor ``x`` differs from it (counts of values, largest change)."""
    import torch

    finite = torch.isfinite(x)
    over = int((torch.isinf(y) & finite).sum())
    flushed = int(((y == 0) & (x != 0)).sum())
    subnormal = int(((y != 0) & (y.abs() < FP16_MIN_NORMAL)).sum())
    back = y.to(x.dtype)
    changed = int(((back != x) & finite).sum())
    ok = finite & torch.isfinite(y)
    change = float((y[ok].float() - x[ok].float()).abs().max()) if changed and bool(ok.any()) else 0.0
    return {
        "name": name,
        "values": x.numel(),
        "changed": changed,
        "over_fp16_max": over,
        "flushed_to_zero": flushed,
        "subnormal": subnormal,
        "max_abs_change": change,
    }


def convert_folder(folder, *, max_shard_bytes: int = SHARD_BYTES) -> dict:
    """Rewrite ``folder``'s safetensors weights in fp16, in place, tensor by tensor.

    Floating tensors of another dtype become fp16; others (integer buffers, fp16 already) are copied.
    The new files are ``model-0000i-of-0000n.safetensors`` shards of at most ``max_shard_bytes`` with a
    ``model.safetensors.index.json`` (a single ``model.safetensors`` when one shard holds them all);
    ``config.json``'s ``dtype`` becomes ``float16``. Stock ``from_pretrained`` loads either layout.

    Returns the conversion record: the source dtype(s); ``tensors`` and ``tensors_changed``; over all
    values, ``values``, ``values_changed`` (not equal after the round trip), ``values_over_fp16_max``
    (now inf), ``values_flushed_to_zero``, ``values_subnormal`` (now under fp16's smallest normal,
    2^-14, so with fewer significand bits); ``max_abs_change`` (finite values); and ``worst``: the five
    tensors with the most changed values. Raises ``ValueError`` when the folder has no safetensors file.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = Path(folder)
    sources = _weight_files(folder)
    if not sources:
        raise ValueError(f"{folder} has no .safetensors weights to store in fp16.")
    staging = folder / ".fp16-shards"
    staging.mkdir()
    shards, current, size, stats, dtypes = [], {}, 0, [], set()

    def flush():
        nonlocal current, size
        if current:
            path = staging / f"shard-{len(shards):05d}.safetensors"
            save_file(current, str(path), metadata={"format": "pt"})
            shards.append((path, list(current)))
        current, size = {}, 0

    for src in sources:
        with safe_open(str(src), framework="pt") as f:
            names = list(f.keys())
        for name in names:
            # one handle per tensor: the file's pages a handle has mapped count in the process's memory until
            # it closes, so a handle kept over a 7.9 GB file would map all of it beside the model
            with safe_open(str(src), framework="pt") as f:
                x = f.get_tensor(name)
            if x.is_floating_point() and x.dtype != torch.float16:
                dtypes.add(str(x.dtype).replace("torch.", ""))
                y = x.to(torch.float16)
                stats.append(_tensor_stats(name, x, y))
            else:
                y = x.clone()  # not a view of the mapped file
            del x
            nbytes = y.numel() * y.element_size()
            if current and size + nbytes > max_shard_bytes:
                flush()
            current[name] = y.contiguous()
            size += nbytes
    flush()
    for src in sources:
        src.unlink()
    (folder / WEIGHT_INDEX_FILE).unlink(missing_ok=True)
    weight_map, total = {}, 0
    for i, (path, names) in enumerate(shards):
        final = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += path.stat().st_size
        path.rename(folder / final)
        weight_map.update({n: final for n in names})
    staging.rmdir()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / WEIGHT_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = "float16"
    cfg.pop("torch_dtype", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return _summary(stats, dtypes, len(shards))


def _summary(stats: list, dtypes: set, shards: int) -> dict:
    def total(key):
        return sum(s[key] for s in stats)

    worst = sorted((s for s in stats if s["changed"]), key=lambda s: s["changed"], reverse=True)[:5]
    return {
        "source_dtypes": sorted(dtypes),
        "shards": shards,
        "tensors": len(stats),
        "tensors_changed": sum(1 for s in stats if s["changed"]),
        "values": total("values"),
        "values_changed": total("changed"),
        "values_over_fp16_max": total("over_fp16_max"),
        "values_flushed_to_zero": total("flushed_to_zero"),
        "values_subnormal": total("subnormal"),
        "max_abs_change": max((s["max_abs_change"] for s in stats), default=0.0),
        "worst": worst,
    }


def describe(record: dict) -> str:
    """One line for a message: what the fp16 conversion changed."""
    if not record or not record.get("tensors"):
        return "the weights were fp16 already"
    return (
        f"storing the {'/'.join(record['source_dtypes'])} weights in fp16 changed {record['values_changed']:,} of "
        f"{record['values']:,} values in {record['tensors_changed']} of {record['tensors']} tensors "
        f"({record['values_over_fp16_max']:,} over fp16's maximum, {record['values_flushed_to_zero']:,} flushed to "
        f"zero, {record['values_subnormal']:,} subnormal; largest change {record['max_abs_change']:.3g})"
    )
