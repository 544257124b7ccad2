# kdq-export: strip-begin
"""The command-line half of the exported ``predict.py`` (see :mod:`kdq.export.script`).

In kdq the names below come from kdq's own modules. In an exported ``predict.py`` the
generator pastes the source of kdq/template.py and kdq/batching.py above this file's body
and drops this block, so the script runs with torch and transformers alone.
"""
from __future__ import annotations

from kdq.batching import combine_swap_tta, predict_logits
from kdq.quant_methods import runtime_modules_by_quant_method
from kdq.template import LABELS, TemplateConfig, encode_row, parse_turns

# In predict.py this constant is generated from the same registry (kdq.export.script).
BACKEND_MODULES = runtime_modules_by_quant_method()
# kdq-export: strip-end

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

DEFAULT_TEST_CSV = "/kaggle/input/lmsys-chatbot-arena/test.csv"
SETTINGS_FILE = "kdq-predict.json"
MANIFEST_FILE = "kdq-manifest.json"
TEMPLATE_KEY = "kdq_template"
TEXT_COLUMNS = ("prompt", "response_a", "response_b")
# The files inference reads; predict.py checks these against the manifest before a long run.
MODEL_ROLES = ("weights", "config", "tokenizer", "quantization", "settings")
# BACKEND_MODULES ({config.json quant_method: modules}): transformers imports these itself when
# config.json names the method; checked up front so a missing backend fails in seconds with the
# offline install line, not mid-load. Generated from kdq's quantization-method registry.


def read_settings(model_dir) -> dict:
    """Inference settings of an exported folder.

    The template comes from ``config.json`` (key ``kdq_template``), where kdq recorded it for
    training; ``kdq-predict.json`` holds only the defaults (``tta``, ``batch_size``,
    ``max_batch_tokens``). Returns a dict with those keys plus ``template`` (TemplateConfig).
    """
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if not config.get(TEMPLATE_KEY):
        raise ValueError(f"{model_dir / 'config.json'} has no {TEMPLATE_KEY!r} entry, so the row template used in "
                         "training is unknown; re-export the model with kdq.export.")
    settings = {"tta": True, "batch_size": 8, "max_batch_tokens": None}
    if (model_dir / SETTINGS_FILE).is_file():
        settings.update(_read_json(model_dir / SETTINGS_FILE))
    settings["template"] = TemplateConfig(**config[TEMPLATE_KEY])
    return settings


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; the exported folder is incomplete.") from None


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_files(model_dir, roles=MODEL_ROLES) -> int:
    """Check the files inference needs against the sizes and sha256 sums in the manifest.

    A truncated or altered upload then fails in seconds instead of after hours of inference.
    Returns the number of files checked; raises ``RuntimeError`` naming the first bad file.
    """
    model_dir = Path(model_dir)
    manifest = _read_json(model_dir / MANIFEST_FILE)
    checked = 0
    for rel, entry in sorted(manifest.get("files", {}).items()):
        if entry.get("role") not in roles:
            continue
        path = model_dir / rel
        if not path.is_file():
            raise RuntimeError(f"{rel}: missing from {model_dir}; re-upload the dataset (kdq verify checks it locally).")
        if path.stat().st_size != entry["size"]:
            raise RuntimeError(f"{rel}: {path.stat().st_size} bytes, the manifest says {entry['size']}; "
                               "the file is truncated or altered.")
        if sha256_file(path) != entry["sha256"]:
            raise RuntimeError(f"{rel}: sha256 differs from the manifest; the file is altered or corrupt.")
        checked += 1
    return checked


def _raise_csv_field_limit():
    # Arena responses can be far longer than csv's default 128 KiB field limit.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def read_rows(csv_path):
    """Read the competition's test CSV.

    Returns ``(ids, rows)``: ``ids`` is ``list[str]``; ``rows[i]`` is the tuple of turn lists
    ``(prompt, response_a, response_b)``. Raises ``ValueError`` naming the row and column for
    a missing column, a duplicate id or a cell that is not a JSON list of strings.
    """
    _raise_csv_field_limit()
    ids, rows, seen = [], [], {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("id",) + TEXT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}; the competition test CSV has columns "
                             f"id, prompt, response_a, response_b (found {reader.fieldnames}).")
        for n, record in enumerate(reader):
            rid = record["id"]
            if rid in seen:
                raise ValueError(f"{csv_path}: duplicate id {rid!r} in data rows {seen[rid]} and {n}; ids must be unique.")
            seen[rid] = n
            ids.append(rid)
            rows.append(tuple(parse_turns(record[c], row=rid, column=c) for c in TEXT_COLUMNS))
    if not ids:
        raise ValueError(f"{csv_path} has a header but no rows.")
    return ids, rows


def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from transformers.utils.logging import tqdm
    except ImportError:  # progress is a nicety, never a reason to fail
        return None
    return tqdm(total=total, desc=desc, unit="row")


def render(tokenizer, rows, template, *, swap: bool = False, progress: bool = False):
    """Token ids of every row (``list[list[int]]``); ``swap`` exchanges response A and B."""
    bar = _progress(len(rows), "render rows (A/B swapped)" if swap else "render rows", progress)
    out = []
    for prompt, a, b in rows:
        out.append(encode_row(tokenizer, prompt, b, a, template) if swap else encode_row(tokenizer, prompt, a, b, template))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def pick_devices(spec: str = "auto"):
    """``"auto"``: every CUDA GPU (``cuda:0``, ``cuda:1``), else ``["cpu"]``; or a comma list."""
    if spec == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    if not devices:
        raise ValueError(f"--devices {spec!r} names no device; use 'auto', 'cpu' or e.g. 'cuda:0,cuda:1'.")
    for d in devices:
        torch.device(d)  # raises on a malformed name
    return devices


def check_backend(model_dir) -> str | None:
    """The quantization method in config.json (or None); raises if its package is missing."""
    qc = _read_json(Path(model_dir) / "config.json").get("quantization_config") or {}
    method = qc.get("quant_method")
    missing = [m for m in BACKEND_MODULES.get(method, ()) if importlib.util.find_spec(m) is None]
    if missing:
        wheels = Path(model_dir) / "wheels"
        raise RuntimeError(f"this model is quantized with {method!r} and needs {missing}, which this Python lacks. "
                           f"Install them offline first: pip install --no-index --find-links {wheels} {' '.join(missing)}")
    return method


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def load_model(model_dir, device):
    """The classifier on ``device``: fp16 on CUDA (a T4 has no bf16), fp32 on CPU."""
    from transformers import AutoModelForSequenceClassification

    dev = torch.device(device)
    kwargs = {"dtype": torch.float16 if dev.type == "cuda" else torch.float32}
    if dev.type == "cuda":
        # Place the weights at load time: quantized layers cannot always be moved afterwards.
        kwargs["device_map"] = {"": str(dev)}
        qc = _read_json(Path(model_dir) / "config.json").get("quantization_config") or {}
        if qc.get("quant_method") == "gptq" and qc.get("backend") in (None, "torch"):
            # kdq quantizes on CPU with gptqmodel's portable torch kernel and records it; on a GPU
            # let gptqmodel pick its fastest kernel for this card (same checkpoint format).
            from transformers import GPTQConfig

            kwargs["quantization_config"] = GPTQConfig(bits=qc["bits"], backend="auto")
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), **kwargs)
    if model.config.pad_token_id is None:
        raise ValueError(f"{model_dir}/config.json has no pad_token_id: the classifier could not find each row's "
                         "last token. Re-export the model with kdq.export.")
    return model.eval()


def shard_bounds(lengths, n_shards: int):
    """Cut rows ``0..N-1`` into at most ``n_shards`` contiguous, non-empty ranges of similar token count.

    Returns ``[(start, end), ...]`` in row order, covering every row once; concatenating the
    shards' outputs therefore restores the original order.
    """
    total = sum(lengths)
    bounds, start, acc, k = [], 0, 0, 1
    for i, n in enumerate(lengths):
        acc += n
        if k < n_shards and acc >= total * k / n_shards and i + 1 < len(lengths):
            bounds.append((start, i + 1))
            start, k = i + 1, k + 1
    bounds.append((start, len(lengths)))
    return [(a, b) for a, b in bounds if b > a]


class _SharedProgress:
    """One progress bar fed by every device's thread."""

    def __init__(self, bar):
        self._bar, self._lock = bar, threading.Lock()

    def update(self, n):
        with self._lock:
            self._bar.update(n)

    def set_postfix(self, **kwargs):
        with self._lock:
            self._bar.set_postfix(**kwargs)


def _score_on(device, model, sequences, pad_id, batch_size, max_batch_tokens, progress):
    if torch.device(device).type == "cuda":
        # Quantized kernels (bitsandbytes, gptqmodel) may use the *current* CUDA device, which
        # is per thread: make it this shard's GPU.
        with torch.cuda.device(torch.device(device)):
            return predict_logits(model, sequences, pad_id, batch_size=batch_size, device=device,
                                  max_batch_tokens=max_batch_tokens, progress=progress)
    return predict_logits(model, sequences, pad_id, batch_size=batch_size, device=device,
                          max_batch_tokens=max_batch_tokens, progress=progress)


def score_sharded(models, sequences, pad_id: int, batch_size: int, max_batch_tokens=None, progress=None):
    """Logits ``(N, num_labels)`` fp32 for ``sequences``, in their order.

    ``models`` is a list of ``(device, model)``, one per GPU. Rows are cut into contiguous,
    token-balanced shards, one thread per device (the GPU work releases the GIL), each
    running the length-sorted batching of :func:`predict_logits` on its shard.
    """
    bounds = shard_bounds([len(s) for s in sequences], len(models))
    if len(bounds) == 1:
        device, model = models[0]
        return _score_on(device, model, sequences, pad_id, batch_size, max_batch_tokens, progress)
    shared = _SharedProgress(progress) if progress is not None else None
    with ThreadPoolExecutor(max_workers=len(bounds)) as pool:
        futures = [pool.submit(_score_on, device, model, sequences[a:b], pad_id, batch_size, max_batch_tokens, shared)
                   for (device, model), (a, b) in zip(models, bounds)]
        parts = [f.result() for f in futures]  # re-raises a worker's exception here
    return torch.cat(parts)


def predict_probs(model_dir, rows, *, tta: bool, batch_size: int, devices=("cpu",), max_batch_tokens=None,
                  progress: bool = False):
    """Class probabilities ``(N, 3)`` float64 for ``rows`` (see :func:`read_rows`), rows summing to 1.

    With ``tta`` each row is also scored with A and B exchanged; the un-swapped probabilities
    of both passes are averaged (:func:`combine_swap_tta`).
    """
    settings = read_settings(model_dir)
    tokenizer = load_tokenizer(model_dir)
    sequences = render(tokenizer, rows, settings["template"], progress=progress)
    if tta:
        sequences += render(tokenizer, rows, settings["template"], swap=True, progress=progress)
    models = [(d, load_model(model_dir, d)) for d in devices]
    pad_id = models[0][1].config.pad_token_id
    bar = _progress(len(sequences), "score", progress)
    logits = score_sharded(models, sequences, pad_id, batch_size, max_batch_tokens, bar)
    if bar is not None:
        bar.close()
    if tta:
        logits = combine_swap_tta(logits[: len(rows)], logits[len(rows):])
    return torch.softmax(logits.double(), dim=-1)


def write_submission(path, ids, probs):
    """Write ``id, winner_model_a, winner_model_b, winner_tie``; written whole or not at all."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", *LABELS])
        for rid, p in zip(ids, probs.tolist()):
            writer.writerow([rid, *(repr(float(x)) for x in p)])
    os.replace(tmp, path)
    return path


def _set_env(devices):
    # The notebook is offline: never let transformers wait on the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if any(torch.device(d).type == "cpu" for d in devices):
        # On CPU gptqmodel would compile kernels on first use and fail without a compiler.
        os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
        os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")


def build_parser(settings_hint: str = ""):
    p = argparse.ArgumentParser(description="Score the LMSYS arena test CSV with the classifier in this folder "
                                            "and write submission.csv." + settings_hint)
    p.add_argument("--test-csv", default=DEFAULT_TEST_CSV, help="competition test CSV (default: %(default)s)")
    p.add_argument("--out", default="submission.csv", help="output CSV (default: %(default)s)")
    p.add_argument("--model-dir", default=None, help="exported folder (default: the folder holding this script)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the A/B-swapped row (default: as exported)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward pass per device (default: as exported)")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="cap rows x longest row per batch")
    p.add_argument("--devices", default="auto", help="'auto' (all GPUs, else CPU), 'cpu', or 'cuda:0,cuda:1'")
    p.add_argument("--skip-checksums", action="store_true", help="do not check the model files against the manifest")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    import time

    args = build_parser().parse_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else Path(__file__).resolve().parent
    try:
        devices = pick_devices(args.devices)
        _set_env(devices)
        settings = read_settings(model_dir)
        tta = settings["tta"] if args.tta is None else args.tta
        batch_size = args.batch_size or settings["batch_size"]
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        method = check_backend(model_dir)
        if not args.skip_checksums:
            n_files = check_files(model_dir)
            print(f"checked {n_files} model files against {MANIFEST_FILE}", file=sys.stderr)
        ids, rows = read_rows(args.test_csv)
        start = time.perf_counter()
        probs = predict_probs(model_dir, rows, tta=tta, batch_size=batch_size, devices=devices,
                              max_batch_tokens=args.max_batch_tokens or settings.get("max_batch_tokens"),
                              progress=not args.quiet)
        write_submission(args.out, ids, probs)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"predict.py: error: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(f"wrote {args.out}: {len(ids)} rows in {seconds:.1f} s ({len(ids) / max(seconds, 1e-9):.1f} rows/s) on "
          f"{','.join(devices)}; tta={tta}, batch_size={batch_size}, quantization={method or 'none'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
