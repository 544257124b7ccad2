"""The Kaggle path on a real GPU, in one command: no network, <= 8 minutes on one H100/H200.

    python bench/gpu_check.py --out gpu_check.json            # on the GPU machine
    python bench/gpu_check.py --dry-run --out /tmp/check.json # tiny shapes on CPU (the test suite runs this)

It writes one JSON with a section per check; a check that cannot run says why ("skipped")
and the others still run:

* ``scoring``: Danube3-4B- and Danube3-500M-shaped classifiers built from their configs
  (random init, no Hub), fp16, scored through kdq's runtime on arena long-tail lengths up to
  2048, with no, full and gated swap TTA: rows/s, tokens/s, padding efficiency;
* ``kd_train_step``: the distillation train step (forward, KD + CE loss, backward, AdamW) of
  the 500M shape, fp16 autocast as on a T4; plus ``train`` from ``bench/gpu_check_train.py``
  (QLoRA / half-LoRA steps) when that file exists;
* ``methods``: every weight format kdq ships (GPTQ-8/4, bitsandbytes int8/nf4, torchao int8) of the 500M
  shape through ``kdq.quantize`` (which reloads and verifies), then loaded as predict.py loads it (the
  kernel it picks by compute capability is recorded) and scored on the same lengths as the fp16 folder:
  tokens/s, and so each format's slowdown against fp16;
* ``predict``: ``kdq.export`` of the 500M shape, then the folder's ``predict.py`` on a test CSV;
* ``budget_inputs``: what :func:`kdq.costs.budget.measured_profile` reads to put measured
  efficiencies into a budget profile; on a GPU that ``_gpu_peaks.json`` lists, the profile itself is
  written beside the JSON (``<out>.profile.json``) for ``kdq compare --set budget=<it>``.

Only torch and transformers are required: the runtime is loaded from ``kdq/runtime`` as a
standalone package (it imports nothing from kdq). Sections that need kdq itself (``datasets``),
bitsandbytes or gptqmodel are skipped when those are missing; ``--wheels DIR`` installs them
offline first (``pip install --no-index --find-links DIR``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Hub configs of h2oai/h2o-danube3-4b-base and -500m-base, from kdq's model data (read as JSON: no kdq import);
# build_classifier sets model type, label count and untied embeddings itself.
_SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
)
SHAPES = {
    name: {k: m["config"][k] for k in _SHAPE_KEYS}
    for name, m in json.loads((ROOT / "kdq" / "budgets" / "_models.json").read_text())["models"].items()
    if name in ("danube3-4b", "danube3-500m")
}
TINY_SHAPES = {
    "tiny-4b": dict(
        vocab_size=400,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    ),
    "tiny-500m": dict(
        vocab_size=400,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    ),  # dims divisible by 32 for GPTQ packing
}
# rows, max_length and batch size per run: sized so the full check stays under 8 minutes on an H100.
FULL = dict(
    rows=384,
    max_length=2048,
    batch_size=8,
    train_batch=4,
    train_length=1024,
    train_steps=5,
    gptq_samples=32,
    predict_rows=256,
    deadline_s=450,
)
DRY = dict(
    rows=24,
    max_length=128,
    batch_size=4,
    train_batch=2,
    train_length=64,
    train_steps=2,
    gptq_samples=4,
    predict_rows=6,
    deadline_s=600,
)
TTA_FRACTION = 0.33


def load_standalone(name: str, path: Path):
    """Import a file (or package) that is not on ``sys.path`` under ``name``."""
    init = path / "__init__.py" if path.is_dir() else path
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(path)] if path.is_dir() else None
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def kdq_or_reason():
    """``(kdq, None)`` or ``(None, why its pipeline does not import)``. ``import kdq`` alone always
    works (names load lazily); ``kdq.data``, which quantize and export need, needs ``datasets``."""
    try:
        importlib.import_module("kdq.data")
        return importlib.import_module("kdq"), None
    except ImportError as err:
        return None, f"kdq does not import here ({err}); bring its wheels: --wheels DIR"


def arena_lengths(n: int, max_length: int, seed: int = 0) -> list:
    """Token lengths with the arena's long tail: log-normal around a quarter of max_length,
    about one row in ten at max_length (conversations longer than the budget are cut)."""
    rng = random.Random(seed)
    return [max(16, min(max_length, int(rng.lognormvariate(math.log(max_length / 4), 0.9)))) for _ in range(n)]


def random_sequences(lengths, vocab: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in lengths]


def build_classifier(shape: dict, device, dtype):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        **shape,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
    )
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in the target dtype: a 4B fp32 copy is 16 GB
    try:
        with torch.device(device):
            model = LlamaForSequenceClassification(config)
    finally:
        torch.set_default_dtype(before)
    return model.eval()


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def score_modes(runtime, model, lengths, device, batch_size, seed) -> dict:
    """rows/s of no, full and gated TTA through the runtime's score_tta (original and swapped rows
    in one length-sorted pass for full TTA), after one warm-up batch."""
    vocab = model.config.vocab_size
    seqs = random_sequences(lengths, vocab, seed)
    swapped = random_sequences(lengths, vocab, seed + 1)  # same lengths: what an A/B swap costs
    longest = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))[:batch_size]  # warm-up at the largest shape
    runtime.batching.predict_logits(model, [seqs[i] for i in longest], 0, batch_size=batch_size, device=device)
    out = {}
    for mode in ("none", "full", "gated"):
        stats = {"seconds": 0.0, "real_tokens": 0, "padded_tokens": 0, "rows": 0}

        def score(s, stats=stats):
            st = {}
            logits = runtime.batching.predict_logits(model, s, 0, batch_size=batch_size, device=device, stats=st)
            for k in stats:
                stats[k] += st[k]
            return logits

        sync(device)
        t0 = time.perf_counter()
        result = runtime.tta.score_tta(score, seqs, swapped, mode=mode, fraction=TTA_FRACTION)
        sync(device)
        wall = time.perf_counter() - t0
        out[mode] = {
            "rows": len(seqs),
            "sequences": result.sequences_scored,
            "seconds": wall,
            "rows_per_s": len(seqs) / wall,
            "tokens_per_s": stats["real_tokens"] / wall,
            "padding_efficiency": stats["real_tokens"] / max(stats["padded_tokens"], 1),
            "finite": bool(torch.isfinite(result.log_probs).all()),
        }
    out["gated_speedup_vs_full"] = out["gated"]["rows_per_s"] / out["full"]["rows_per_s"]
    return out


def check_scoring(ctx) -> dict:
    res = {
        "lengths": ctx["lengths"],
        "batch_size": ctx["batch_size"],
        "max_length": ctx["max_length"],
        "tta_fraction": TTA_FRACTION,
        "shapes": {},
    }
    for name, shape in ctx["shapes"].items():
        model = build_classifier(shape, ctx["device"], ctx["dtype"])
        res["shapes"][name] = {
            "config": shape,
            "dtype": str(ctx["dtype"]).replace("torch.", ""),
            **score_modes(ctx["runtime"], model, ctx["lengths"], ctx["device"], ctx["batch_size"], 0),
        }
        del model
        if ctx["cuda"]:
            torch.cuda.empty_cache()
    return res


def check_kd_train_step(ctx) -> dict:
    """Full-parameter KD steps of the small shape: fp16 autocast + GradScaler on CUDA (T4 has no bf16)."""
    p = ctx["plan"]
    from kdq.distill import losses  # torch only: runs without datasets

    shape = list(ctx["shapes"].values())[-1]
    model = build_classifier(shape, ctx["device"], torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(enabled=ctx["cuda"])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, shape["vocab_size"], (p["train_batch"], p["train_length"]), generator=g).to(ctx["device"])
    labels = torch.randint(0, 3, (p["train_batch"],), generator=g).to(ctx["device"])
    teacher = torch.randn(p["train_batch"], 3, generator=g).to(ctx["device"])
    times = []
    for step in range(p["train_steps"] + 1):  # the first step is a warm-up
        sync(ctx["device"])
        t0 = time.perf_counter()
        with torch.autocast(device_type="cuda" if ctx["cuda"] else "cpu", dtype=torch.float16, enabled=ctx["cuda"]):
            logits = model(input_ids=ids, use_cache=False).logits
        parts = losses.distillation_loss(logits, teacher, labels, alpha=0.5, temperature=2.0)
        scaler.scale(parts.loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync(ctx["device"])
        if step:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(ctx["device"]) / 1e9 if ctx["cuda"] else None
    return {
        "shape": shape,
        "batch": p["train_batch"],
        "length": p["train_length"],
        "steps": len(times),
        "seconds_per_step": sum(times) / len(times),
        "rows_per_s": p["train_batch"] * len(times) / sum(times),
        "loss_finite": bool(torch.isfinite(parts.loss)),
        "peak_memory_gb": peak,
        "precision": "fp16-autocast" if ctx["cuda"] else "fp32",
    }


def check_train_module(ctx) -> dict:
    try:
        module = (
            load_standalone("gpu_check_train", ROOT / "bench" / "gpu_check_train.py")
            if (ROOT / "bench" / "gpu_check_train.py").is_file()
            else None
        )
    except ImportError as err:
        return {"status": "skipped", "reason": f"bench/gpu_check_train.py does not import: {err}"}
    if module is None:
        return {"status": "skipped", "reason": "bench/gpu_check_train.py is not in this checkout"}
    return module.run(dry_run=ctx["dry_run"])


def _small_model_folder(ctx) -> Path:
    """The small shape saved with a tokenizer (kdq's offline BPE: its ids fit any vocab), fp16 on CUDA."""
    folder = ctx["work"] / "small"
    if not folder.exists():
        from kdq.testing import make_tokenizer

        model = build_classifier(list(ctx["shapes"].values())[-1], "cpu", ctx["dtype"])
        model.save_pretrained(folder)
        make_tokenizer(folder)
    return folder


def _needs(kdq, *modules):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if kdq is None or missing:
        return {"status": "skipped", "reason": ctx_reason(kdq, missing)}
    return None


def ctx_reason(kdq, missing):
    parts = ([] if kdq is not None else ["kdq does not import (it needs datasets)"]) + [
        f"{m} is not installed" for m in missing
    ]
    return "; ".join(parts) + " (offline: --wheels DIR with their wheels)"


# Every weight format kdq ships, measured on the same shape and lengths as fp16: their slowdowns go into the profile.
METHODS = ("gptq-8", "gptq-4", "bnb-int8", "bnb-nf4", "torchao-int8")
METHOD_NEEDS = {"gptq": ("gptqmodel", "optimum"), "bnb": ("bitsandbytes",), "torchao": ("torchao",)}


def _quantize_method(ctx, method: str) -> Path:
    kdq = ctx["kdq"]
    from kdq.testing import make_arena_rows

    template = kdq.TemplateConfig(max_length=ctx["max_length"])
    options = {"template": template}
    calibration = None
    if method.startswith("gptq"):
        options["num_samples"] = ctx["plan"]["gptq_samples"]
        calibration = make_arena_rows(ctx["plan"]["gptq_samples"], seed=1)
    config = kdq.QuantConfig.from_name(method, **options)
    return Path(
        kdq.quantize(str(_small_model_folder(ctx)), config, calibration=calibration, out_dir=ctx["work"] / method)
    )


def _score_folder(ctx, folder: Path, lengths) -> dict:
    """predict.py's load (its kernel choice by compute capability included) and no-TTA scoring of ``lengths``."""
    runtime = ctx["runtime"]
    model = runtime.predict.load_model(folder, ctx["device"])
    kernel = runtime.predict.cuda_kernel(folder, ctx["device"]) if ctx["cuda"] else None
    seqs = random_sequences(lengths, model.config.vocab_size, 3)
    runtime.batching.predict_logits(model, seqs[:2], 0, batch_size=ctx["batch_size"], device=ctx["device"])
    sync(ctx["device"])
    t0 = time.perf_counter()
    logits = runtime.batching.predict_logits(model, seqs, 0, batch_size=ctx["batch_size"], device=ctx["device"])
    sync(ctx["device"])
    wall = time.perf_counter() - t0
    del model
    return {
        "rows": len(seqs),
        "rows_per_s": len(seqs) / wall,
        "tokens_per_s": sum(lengths) / wall,
        "finite": bool(torch.isfinite(logits).all()),
        "folder_mb": _mb(folder),
        "kernel": (kernel or {}).get("kernel"),
    }


def check_methods(ctx) -> dict:
    """Each of :data:`METHODS` on the small shape: kdq.quantize (reload-verified), then scored as predict.py
    scores it, on the same lengths as the fp16 run of that shape (``scoring``); a method whose package is
    missing says so and the others still run."""
    lengths = ctx["lengths"][: max(8, len(ctx["lengths"]) // 2)]
    res = {"fp16-small": {"status": "ok", **_score_folder(ctx, _small_model_folder(ctx), lengths)}}
    for method in METHODS:
        skip = _needs(ctx["kdq"], *METHOD_NEEDS[method.split("-")[0]])
        if skip:
            res[method] = skip
            continue
        if time.perf_counter() > ctx["deadline"] - 30:
            res[method] = {"status": "skipped", "reason": "time budget spent"}
            continue
        t0 = time.perf_counter()
        try:
            folder = _quantize_method(ctx, method)
            res[method] = {
                "status": "ok",
                "quantize_seconds": time.perf_counter() - t0,
                **_score_folder(ctx, folder, lengths),
            }
        except Exception as err:  # one method's failure must not hide the others'
            res[method] = {"status": "error", "error": f"{type(err).__name__}: {err}"[:1500]}
        if ctx["cuda"]:
            torch.cuda.empty_cache()
    res["lengths"] = len(lengths)
    return res


def check_predict(ctx) -> dict:
    kdq = ctx["kdq"]
    if kdq is None:
        return {"status": "skipped", "reason": ctx_reason(None, [])}
    from kdq.testing import write_arena_csv

    folder = _small_model_folder(ctx)
    t0 = time.perf_counter()
    out = kdq.export(
        str(folder),
        ctx["work"] / "export",
        kdq.ExportConfig(
            title="gpu check export",
            dataset_id="kdq-gpu-check/export",
            tta="gated",
            template=kdq.TemplateConfig(max_length=ctx["max_length"]),
            probe_rows=4,
            overwrite=True,
        ),
    )
    export_s = time.perf_counter() - t0
    csv = write_arena_csv(
        ctx["work"] / "test.csv", ctx["plan"]["predict_rows"], seed=9, max_words=ctx["max_length"] * 2
    )
    sub = ctx["work"] / "submission.csv"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(out / "predict.py"),
            "--test-csv",
            str(csv),
            "--out",
            str(sub),
            "--devices",
            "cuda:0" if ctx["cuda"] else "cpu",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - t0
    verify = kdq.verify(out, device="cuda" if ctx["cuda"] else "cpu", atol=5e-3 if ctx["cuda"] else None)
    return {
        "export_seconds": export_s,
        "predict_returncode": proc.returncode,
        "predict_seconds": wall,
        "rows": ctx["plan"]["predict_rows"],
        "rows_per_s_incl_load": ctx["plan"]["predict_rows"] / wall,
        "stderr_tail": proc.stderr[-1500:],
        "submission_written": sub.is_file(),
        "verify_probe_max_abs_diff": verify.probe_max_abs_diff,
        "weights_mb": _mb(out, "*.safetensors"),
    }


def _mb(folder, pattern="*"):
    return sum(p.stat().st_size for p in Path(folder).glob(pattern) if p.is_file()) / 1e6


def budget_inputs(results: dict) -> dict | None:
    """What kdq.costs.budget.measured_profile needs: the large shape's no-TTA fp16 run and,
    per quantized format, its slowdown against fp16 on the same shape."""
    scoring = results.get("scoring") or {}
    shapes = scoring.get("shapes") or {}
    if not shapes:
        return None
    big_name = next(iter(shapes))
    big = shapes[big_name]
    small = shapes[list(shapes)[-1]]
    inputs = {
        "device": results["env"]["device"],
        "shape": big_name,
        "config": big["config"],
        "lengths": scoring["lengths"],
        "batch_size": scoring["batch_size"],
        "seconds": big["none"]["seconds"],
        "slowdown": {},
        "slowdown_shape": list(shapes)[-1],
    }
    fp16 = (results.get("methods") or {}).get("fp16-small") or {}
    reference = fp16.get("tokens_per_s") or small["none"]["tokens_per_s"]
    for method, r in (results.get("methods") or {}).items():
        if method in METHODS and isinstance(r, dict) and r.get("tokens_per_s"):
            inputs["slowdown"][method] = max(1.0, reference / r["tokens_per_s"])
    return inputs


def write_profile(results: dict, out: Path, base: str = "lmsys-2xt4") -> Path | None:
    """The budget profile with this run's measured efficiencies (kdq.costs.budget.measured_profile), as JSON
    beside ``out``: ``kdq compare --set budget=<it>`` (or ``EvalConfig(budget=path)``) projects with it."""
    if not results.get("budget_inputs") or not results["env"].get("kdq_imports"):
        return None
    from kdq.costs.budget import measured_profile

    try:
        profile, sources = measured_profile(base, out)
    except ValueError as err:  # e.g. measured on a CPU or a GPU _gpu_peaks.json does not list
        results["profile"] = {"status": "skipped", "reason": str(err)}
        return None
    path = out.with_name(out.stem + ".profile.json")
    path.write_text(json.dumps({**profile.to_dict(), "_sources": sources}, indent=2))
    return path


def run(dry_run: bool, out: Path, wheels: str | None = None) -> dict:
    if wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-index",
                "--find-links",
                wheels,
                "datasets",
                "bitsandbytes",
                "gptqmodel",
                "optimum",
            ],
            capture_output=True,
            text=True,
        )
    cuda = torch.cuda.is_available() and not dry_run
    plan = DRY if dry_run else FULL
    device = "cuda:0" if cuda else "cpu"
    start = time.perf_counter()
    deadline = start + plan["deadline_s"]
    kdq, why = kdq_or_reason()
    for sub in ("batching", "dtypes", "tta", "predict"):  # torch and transformers only: runs without datasets
        importlib.import_module(f"kdq.runtime.{sub}")
    runtime = sys.modules["kdq.runtime"]
    import transformers

    results = {
        "env": {
            "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or 'cpu'})",
            "dry_run": dry_run,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "kdq_imports": kdq is not None,
            "kdq_import_error": why,
            "packages": {
                m: importlib.util.find_spec(m) is not None
                for m in ("datasets", "bitsandbytes", "gptqmodel", "peft", "accelerate")
            },
        }
    }
    with tempfile.TemporaryDirectory(prefix="kdq-gpu-check-") as work:
        ctx = {
            "dry_run": dry_run,
            "cuda": cuda,
            "device": device,
            "dtype": runtime.dtypes.compute_dtype(device),  # kdq's rule: fp16 on CUDA (as on a T4), fp32 on CPU
            "plan": plan,
            "batch_size": plan["batch_size"],
            "max_length": plan["max_length"],
            "kdq": kdq,
            "runtime": runtime,
            "work": Path(work),
            "shapes": TINY_SHAPES if dry_run else SHAPES,
            "lengths": arena_lengths(plan["rows"], plan["max_length"]),
            "deadline": deadline,
        }
        checks = [
            ("scoring", check_scoring),
            ("kd_train_step", check_kd_train_step),
            ("train", check_train_module),
            ("methods", check_methods),
            ("predict", check_predict),
        ]
        for name, fn in checks:
            left = deadline - time.perf_counter()
            if left < 20:
                results[name] = {"status": "skipped", "reason": f"time budget ({plan['deadline_s']} s) spent"}
                continue
            t0 = time.perf_counter()
            try:
                results[name] = fn(ctx)
            except Exception as err:  # one failed check must not hide the others
                results[name] = {"status": "error", "error": f"{type(err).__name__}: {err}"[:2000]}
            if isinstance(results[name], dict):
                results[name].setdefault("status", "ok")
                results[name]["check_seconds"] = time.perf_counter() - t0
            print(
                f"gpu_check: {name}: {results[name].get('status')} ({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
            if cuda:
                torch.cuda.empty_cache()
    results["budget_inputs"] = budget_inputs(results)
    results["total_seconds"] = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, out)
    profile = write_profile(results, out)
    if profile is not None:
        print(f"gpu_check: the measured budget profile: {profile}", file=sys.stderr)
    return results


def main(argv=None) -> int:
    from kdq.runtime.constants import GPU_CHECK_FILE  # standard library only, like the rest of the runtime

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=GPU_CHECK_FILE, help="the JSON to write (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (seconds; what the test suite runs)")
    p.add_argument(
        "--wheels",
        default=None,
        help="pip install --no-index --find-links DIR datasets bitsandbytes gptqmodel optimum first (offline)",
    )
    args = p.parse_args(argv)
    results = run(args.dry_run, Path(args.out), args.wheels)
    bad = [k for k, v in results.items() if isinstance(v, dict) and v.get("status") == "error"]
    print(
        f"gpu_check: wrote {args.out} in {results['total_seconds']:.0f} s; "
        + (f"errors in {bad}" if bad else "no errors"),
        file=sys.stderr,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
