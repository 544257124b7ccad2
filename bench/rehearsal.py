"""The mission at its real scale, on CPU: Danube3-4B and Danube3-500M shapes through every stage.

    python bench/rehearsal.py --out runs/rehearsal                 # full size (about an hour on 2 cores)
    python bench/rehearsal.py --out /tmp/r --width 0.0625 --layers 0.25 --vocab 2000   # the CI size (seconds)
    python bench/rehearsal.py --out runs/rehearsal --stages export-500m,predict-500m  # some stages again

The classifiers are built from ``kdq/budgets/_models.json`` (Danube3's published configs) with random
weights, saved in bf16 as a fine-tuned checkpoint would be, with a byte-level BPE tokenizer of the real
32,000-entry vocabulary and arena rows with the LMSYS length profile, up to and past 2,048 tokens
(rendered with ``max_length=2048``). Row counts are small: the point is size, lengths and memory.

Each stage runs in its own process, so its peak host RSS is the whole process's (``ru_maxrss`` of the
child, imports included). Per stage, ``rehearsal.json`` records the wall time, the peak RSS, the bytes
it wrote, and the peak divided by the bf16 bytes of the largest model it holds (``ratio``), against the
target: 1.5x for every stage that loads a model, 1.2x for ``predict.py`` (:data:`TARGETS`); training
is judged against kdq's training-memory plan instead (optimizer states are not weights). The CI size
runs the same stages on a narrow copy of the shapes (``tests/test_rehearsal.py``): it keeps the code
path alive, its ratios mean nothing (the interpreter's own 0.5 GB dominates).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = json.loads((ROOT / "kdq" / "budgets" / "_models.json").read_text())["models"]
MAX_LENGTH = 2048
# Token lengths of the rehearsal's rows before the template cuts them: the arena's long tail, two past 2,048.
ROW_TOKENS = (3200, 2300, 1800, 1200, 700, 400, 200, 90)
# What the 4B teacher scores (and the students train on): the longest and the shortest row. Memory is set by the
# longest; a 4B forward over 2,048 tokens takes minutes in fp32 on 2 cores, so more rows would only cost time.
LONG_SHORT = (ROW_TOKENS[0], ROW_TOKENS[-1])
TARGETS = {"load": 1.5, "predict": 1.2}


# --------------------------------------------------------------------------- the stages' inputs
def pseudo_words(n: int, seed: int = 0) -> list:
    """``n`` distinct pronounceable words (the tokenizer's corpus and the rows' text)."""
    rng = random.Random(seed)
    onsets = "b c d f g h j k l m n p r s t v w z br ch cl dr gr pl sh st th tr".split()
    vowels, codas = "aeiou", "nrstlmk"
    words = set()
    while len(words) < n:
        syl = [rng.choice(onsets) + rng.choice(vowels) + (rng.choice(codas) if rng.random() < 0.4 else "")]
        syl += [rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(0, 3))]
        words.add("".join(syl))
    return sorted(words)


def make_tokenizer(out_dir: Path, vocab_size: int):
    """A byte-level BPE tokenizer with exactly ``vocab_size`` entries, trained in code (no Hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = pseudo_words(max(2000, vocab_size))
    rng = random.Random(1)
    corpus = [" ".join(rng.choice(words) for _ in range(64)) for _ in range(max(400, vocab_size // 8))]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    short = vocab_size - tok.get_vocab_size()
    if short > 0:  # the corpus ran out of merges: fill the vocabulary to its real size
        tok.add_tokens([f"<extra_{i}>" for i in range(short)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(out_dir))
    return fast


def write_rows(path: Path, tokens, seed: int, labelled: bool = True) -> Path:
    """Arena rows (JSON turn lists) whose prompt + responses come to about ``tokens[i]`` tokens each."""
    import csv

    words = pseudo_words(4000)
    rng = random.Random(seed)
    labels = ("winner_model_a", "winner_model_b", "winner_tie")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "response_a", "response_b", *(labels if labelled else ())])
        for i, n in enumerate(tokens):
            # about 1.6 tokens a word; the prompt gets a tenth, each response the rest's half
            n_words = max(6, int(n / 1.6))
            parts = [max(2, n_words // 10), max(2, n_words * 9 // 20), max(2, n_words * 9 // 20)]
            texts = [json.dumps([" ".join(rng.choice(words) for _ in range(k))]) for k in parts]
            onehot = [0, 0, 0]
            onehot[i % 3] = 1
            w.writerow([1000 + i, *texts, *(onehot if labelled else ())])
    return path


def shape(name: str, width: float, layers: float, vocab: int) -> dict:
    """A model's config from ``_models.json``, narrowed by ``width`` and made shallower by ``layers``."""
    c = dict(MODELS[name]["config"])
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c["hidden_size"] // heads
    if width < 1:
        kv = max(1, round(kv * width))
        heads = max(kv, round(heads * width) // kv * kv)
        c["hidden_size"] = heads * max(8, round(head_dim * math.sqrt(width)) // 2 * 2)
        c["intermediate_size"] = max(16, round(c["intermediate_size"] * width))
    c.update(
        num_attention_heads=heads,
        num_key_value_heads=kv,
        num_hidden_layers=max(2, round(c["num_hidden_layers"] * layers)),
        vocab_size=vocab,
    )
    return c


def build_classifier(folder: Path, config: dict, tokenizer, seed: int):
    """A random ``LlamaForSequenceClassification`` of ``config``, initialised and saved in bf16."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from kdq.models import attach_template, prepare_classifier
    from kdq.runtime.template import TemplateConfig

    cfg = LlamaConfig(
        **{k: v for k, v in config.items() if k != "model_type"},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_position_embeddings=4096,
    )
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # a 4B fp32 copy would be 16 GB
    try:
        model = LlamaForSequenceClassification(cfg).eval()
    finally:
        torch.set_default_dtype(before)
    prepare_classifier(model, tokenizer)
    attach_template(model, TemplateConfig(max_length=MAX_LENGTH))
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


# --------------------------------------------------------------------------- the stages
class Ctx:
    """The rehearsal's folders and sizes, from the command line (every stage process rebuilds it)."""

    def __init__(self, args):
        self.out = Path(args.out).resolve()
        self.width, self.layers, self.vocab = args.width, args.layers, args.vocab
        self.full = args.width == 1 and args.layers == 1
        self.rows = self.out / "rows.csv"
        self.rows_4b = self.out / "rows-long-short.csv"
        self.calib = self.out / "calibration.csv"
        self.tok = self.out / "tokenizer"
        self.m = {k: self.out / "models" / k for k in ("4b", "500m")}
        self.student = self.out / "models" / "500m-shrunk"
        self.n_rows = args.rows

    def row_tokens(self):
        return ROW_TOKENS[: self.n_rows]

    def template(self):
        from kdq.runtime.template import TemplateConfig

        return TemplateConfig(max_length=MAX_LENGTH)


def st_build(ctx):
    """Tokenizer, rows, and both classifiers saved in bf16."""
    from transformers import AutoTokenizer

    ctx.out.mkdir(parents=True, exist_ok=True)
    make_tokenizer(ctx.tok, ctx.vocab)
    tok = AutoTokenizer.from_pretrained(str(ctx.tok))
    write_rows(ctx.rows, ctx.row_tokens(), seed=0)
    write_rows(ctx.rows_4b, LONG_SHORT, seed=2)
    write_rows(ctx.calib, [2100, 900, 300, 90], seed=1)
    for i, (key, name) in enumerate((("4b", "danube3-4b"), ("500m", "danube3-500m"))):
        build_classifier(ctx.m[key], shape(name, ctx.width, ctx.layers, ctx.vocab), tok, seed=i)
    return {"holds": "4b", "wrote": [ctx.out / "models", ctx.tok]}


def st_shrink(ctx):
    """``kdq.shrink`` 4B -> the 500M shape (width and depth) on 8 calibration rows."""
    import kdq

    s = json.loads((ctx.m["500m"] / "config.json").read_text())
    config = kdq.ShrinkConfig(
        strategy="block-influence",
        num_layers=s["num_hidden_layers"],
        hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"],
        num_attention_heads=s["num_attention_heads"],
        num_key_value_heads=s["num_key_value_heads"],
    )
    kdq.shrink(
        str(ctx.m["4b"]),
        config=config,
        calibration=str(ctx.calib),
        out_dir=str(ctx.student),
        overwrite=True,
        verbose=False,
    )
    return {"holds": "4b", "wrote": [ctx.student]}


def st_teacher_pass(ctx):
    """The 4B teacher's pass with swap TTA and cached pooled features, over the rehearsal's rows."""
    from kdq.data import load_arena
    from kdq.distill.teacher_pass import teacher_pass

    cfg = kd_config(ctx, "kd-teacher-pass")
    teacher_pass(str(ctx.m["4b"]), load_arena(str(ctx.rows_4b)), cfg.teacher_pass, template=cfg.template, features=True)
    return {"holds": "4b", "wrote": [ctx.out / "cache"]}


def kd_config(ctx, name: str, **changes):
    """The recommended cross-width recipe, as the teacher pass and the distillation runs share it (one cache
    key): swap TTA on, as the recipe's swapped training rows need the teacher's features of both orders.
    ``changes``: more fields, sections as dicts (merged into the recipe's)."""
    import kdq

    return kdq.recipe("cross-width-cached").config(
        output_dir=str(ctx.out / "runs" / name),
        template=ctx.template(),
        teacher_pass={"cache_dir": str(ctx.out / "cache"), "batch_size": 1},
        **changes,
    )


def _replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def _distill(ctx, name, lora):
    import kdq

    out = ctx.out / "runs" / name
    training = {"max_steps": 2, "batch_size": 1, "eval_batch_size": 1, "logging_steps": 1}
    cfg = kd_config(ctx, name, training=training, overwrite=True, lora=lora)
    kdq.distill(str(ctx.student), str(ctx.rows_4b), teacher=str(ctx.m["4b"]), config=cfg)
    record = next(out.rglob("kdq-distill.json"), None)
    plan = json.loads(record.read_text()).get("metrics", {}).get("train_memory") if record else None
    return {"holds": "500m", "wrote": [out], "plan": plan}


def st_distill_full(ctx):
    """Two optimizer steps of the 500M student, full fine-tune, recommended recipe, rows up to 2,048 tokens."""
    return _distill(ctx, "kd-full", None)


def st_distill_lora(ctx):
    """The same with LoRA (r=16)."""
    import kdq

    return _distill(ctx, "kd-lora", kdq.LoraSettings(r=16))


def _quantize(ctx, key, method):
    import kdq

    src = ctx.student if key == "500m" else ctx.m[key]
    out = ctx.out / "q" / f"{key}-{method}"
    # GPTQ's Hessians see the calibration rows (up to 2,100 tokens); the reload probe is 2 short synthetic rows
    # (three forward passes of it: the source, the quantized model, its reload), which memory does not depend on
    gptq = method.startswith("gptq")
    qc = _replace(kdq.QuantConfig.from_name(method), probe_rows=2, **({"num_samples": 4} if gptq else {}))
    calib = str(ctx.calib) if gptq else None
    kdq.quantize(str(src), qc, calibration=calib, out_dir=str(out), overwrite=True)
    return {"holds": key, "wrote": [out]}


def _variant(ctx, name):
    key, _, method = name.partition("-")
    if not method:
        return key, ctx.student if key == "500m" else ctx.m[key]
    return key, ctx.out / "q" / name


def _compare(ctx, names):
    import kdq

    variants = {n: str(_variant(ctx, n)[1]) for n in names}
    # At full size: the longest and shortest rows, no swap TTA. A 4B forward over 2,048 tokens takes minutes on
    # 2 cores; the peak is set by the longest row, and TTA's swapped rows are batches of their own.
    tta = "none" if ctx.full else "full"
    cfg = kdq.EvalConfig(batch_size=1, tta=tta, progress=False, bootstrap_samples=200)
    rows = ctx.rows_4b if ctx.full or names[0].startswith("4b") else ctx.rows
    out = ctx.out / "compare" / "-".join(names)
    kdq.compare(variants, str(rows), config=cfg, out_dir=str(out), overwrite=True)
    return {"holds": _variant(ctx, names[0])[0], "wrote": [out]}


def _export(ctx, name):
    import kdq

    key, src = _variant(ctx, name)
    out = ctx.out / "export" / name
    # At full size no swap TTA, and one arena-like row of each of the 5 kinds (of 20): the fp16 check computes
    # every check row in fp32 and in (emulated) fp16, minutes per pass for a 4B on 2 cores. Random weights are
    # not a fine-tune: the random 4B's fp16 probabilities are 3.8e-3 from fp32 on a probe row (over fp16_atol's
    # 2e-3), so the check refuses, as it should; the rehearsal takes the fallback a user would (fp32 compute on
    # CUDA, recorded in kdq-predict.json), which also runs the check's extra pass.
    few = {"tta": "none", "arena_like_rows": 5, "fp16_fallback": "fp32-compute"} if ctx.full else {}
    cfg = kdq.ExportConfig(
        title=f"kdq rehearsal {name}", dataset_id=f"kdq/rehearsal-{name}", overwrite=True, probe_rows=2, **few
    )
    kdq.export(str(src), str(out), cfg)
    kdq.verify(str(out))
    return {"holds": key, "wrote": [out]}


def _predict(ctx, name):
    out = ctx.out / "export" / name
    sub = ctx.out / f"submission-{name}.csv"
    rows = ctx.rows_4b if ctx.full or name.startswith("4b") else ctx.rows
    cmd = [sys.executable, str(out / "predict.py"), "--test-csv", str(rows), "--out", str(sub), "--tta", "none"]
    cmd += ["--batch-size", "1"]
    subprocess.run(cmd, check=True)
    return {"holds": name.partition("-")[0], "wrote": [sub], "target": "predict"}


STAGES = {
    "build": st_build,
    "shrink": st_shrink,
    "teacher-pass": st_teacher_pass,
    "distill-full": st_distill_full,
    "distill-lora": st_distill_lora,
    "quantize-500m-gptq-8": lambda c: _quantize(c, "500m", "gptq-8"),
    "quantize-500m-bnb-int8": lambda c: _quantize(c, "500m", "bnb-int8"),
    "quantize-500m-bnb-nf4": lambda c: _quantize(c, "500m", "bnb-nf4"),
    "quantize-500m-torchao-int8": lambda c: _quantize(c, "500m", "torchao-int8"),
    "quantize-4b-bnb-nf4": lambda c: _quantize(c, "4b", "bnb-nf4"),
    "quantize-4b-torchao-int8": lambda c: _quantize(c, "4b", "torchao-int8"),
    "compare-500m": lambda c: _compare(c, ["500m", "500m-gptq-8", "500m-bnb-int8"]),
    "compare-500m-fp16": lambda c: _compare(c, ["500m"]),
    "compare-4b": lambda c: _compare(c, ["4b"]),
    "export-500m": lambda c: _export(c, "500m"),
    "export-500m-gptq-8": lambda c: _export(c, "500m-gptq-8"),
    "export-4b": lambda c: _export(c, "4b"),
    "predict-500m": lambda c: _predict(c, "500m"),
    "predict-4b": lambda c: _predict(c, "4b"),
}
# The CI size skips what only measures the backends' own CPU speed at size (GPTQ's Hessians, bnb's packing).
CI_STAGES = (
    "build",
    "shrink",
    "teacher-pass",
    "distill-full",
    "quantize-500m-bnb-int8",
    "compare-500m-fp16",
    "export-500m",
    "export-4b",
    "predict-4b",
)


# --------------------------------------------------------------------------- measurement
def du(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def bf16_bytes(ctx, key: str) -> int:
    """The bytes of a model's weights in bf16/fp16 (its saved folder's safetensors)."""
    folder = ctx.student if key == "500m" else ctx.m[key]
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def run_stage(args, name: str) -> dict:
    """Run one stage in a child process; its result plus wall time and the child's peak RSS."""
    cmd = [sys.executable, __file__, "--one", name, *_ctx_args(args)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    out = Path(args.out).resolve() / "stages" / f"{name}.json"
    result = json.loads(out.read_text()) if code == 0 and out.is_file() else {"error": f"exit code {code}"}
    result.update(stage=name, seconds=round(wall, 1), peak_rss_gb=usage.ru_maxrss * 1024 / 1e9)
    ctx = Ctx(args)
    if "holds" in result and "error" not in result:
        held = bf16_bytes(ctx, result["holds"])
        result["model_gb"] = held / 1e9
        result["ratio"] = usage.ru_maxrss * 1024 / held
        target = TARGETS.get(result.get("target", "load"))
        result["target_ratio"] = None if result.get("plan") is not None or name.startswith("distill") else target
    return result


def _ctx_args(args) -> list:
    keys = ("out", "width", "layers", "vocab", "rows")
    return [x for k in keys for x in (f"--{k}", str(getattr(args, k)))]


def one(args, name: str) -> int:
    """The child: run stage ``name`` and write its result (with the bytes it wrote) to stages/<name>.json."""
    ctx = Ctx(args)
    for module in ("torch", "transformers", "kdq.models"):  # the interpreter's own baseline, before the stage
        importlib.import_module(module)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    result = STAGES[name](ctx)
    wrote = result.pop("wrote", [])
    result["baseline_gb"] = baseline
    result["disk_gb"] = sum(du(p) for p in wrote) / 1e9
    result["wrote"] = [str(Path(p).relative_to(ctx.out)) for p in wrote]
    (ctx.out / "stages").mkdir(parents=True, exist_ok=True)
    (ctx.out / "stages" / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


def table(results: list) -> str:
    lines = [
        "| stage | time | peak host RSS | of which imports | disk written | model held (bf16) | RSS / model | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            err = r["error"]
            lines.append(f"| {r['stage']} | {r['seconds']:.0f} s | {r['peak_rss_gb']:.1f} GB | | | | **{err}** | |")
            continue
        target = r.get("target_ratio")
        mark = "" if target is None or r["ratio"] <= target else " **over**"
        plan = r.get("plan")
        goal = f"{target}x" if target is not None else f"plan {plan['peak'] / 1e9:.2f} GB" if plan else "plan"
        base = r.get("baseline_gb")
        lines.append(
            f"| {r['stage']} | {r['seconds']:.0f} s | {r['peak_rss_gb']:.2f} GB | "
            f"{'' if base is None else f'{base:.2f} GB'} | {r['disk_gb']:.2f} GB | "
            f"{r['model_gb']:.2f} GB ({r['holds']}) | {r['ratio']:.2f}x{mark} | {goal} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--width", type=float, default=1.0, help="fraction of the real widths (1: full size)")
    p.add_argument("--layers", type=float, default=1.0, help="fraction of the real depths")
    p.add_argument("--vocab", type=int, default=32000, help="tokenizer and embedding entries")
    p.add_argument("--rows", type=int, default=len(ROW_TOKENS), help="rows scored by each stage (at most 8)")
    p.add_argument("--stages", default=None, help="comma-separated stage names (default: all)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        return one(args, args.one)
    full = args.width == 1 and args.layers == 1
    names = args.stages.split(",") if args.stages else list(STAGES if full else CI_STAGES)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; stages: {list(STAGES)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    record = out / "rehearsal.json"
    results = {r["stage"]: r for r in json.loads(record.read_text())["stages"]} if record.is_file() else {}
    for name in names:
        print(f"== {name}", flush=True)
        results[name] = run_stage(args, name)
        print(json.dumps(results[name], default=str), flush=True)
        ordered = [results[n] for n in STAGES if n in results]
        record.write_text(json.dumps({"environment": environment(), "stages": ordered}, indent=1, default=str))
    print(table([results[n] for n in STAGES if n in results]))
    return int(any("error" in results[n] for n in names))


def environment() -> dict:
    from kdq.utils.versions import library_versions

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "commit": commit.strip(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "python": platform.python_version(),
        "versions": library_versions(),
        "max_rss_unit": "ru_maxrss of the stage's process",
        "resource_limit": resource.getrlimit(resource.RLIMIT_AS),
    }


if __name__ == "__main__":
    sys.exit(main())
