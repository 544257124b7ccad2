"""Every method x bits on a tiny random Llama classifier (CPU): verified folders that load without kdq."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import kdq
from kdq.costs.budget import available_budgets, load_budget
from kdq.costs.modelspec import weight_format_of
from kdq.quant_methods import get_quantizer, method_for, registered_methods, variant_names
from kdq.quantize import QuantConfig, QuantizationError, ReloadMismatchError, read_report, recheck
from kdq.quantize.verify import REPORT_FILE, check_head, is_quantized_layer
from kdq.runtime.constants import TEMPLATE_KEY
from kdq.runtime.template import TemplateConfig

TEMPLATE = TemplateConfig(max_length=128)
# case name -> (variant name, QuantConfig overrides on top of QuantConfig.from_name): every
# registered variant with its defaults, so a new method is covered without editing this file,
# plus the built-in methods' own options worth a case of their own
CASES = {name: (name, {}) for name in variant_names()}
CASES.update(
    {
        "gptq-4": ("gptq-4", {"group_size": 32}),
        "gptq-8": ("gptq-8", {"desc_act": True}),
        "bnb-nf4-nodq": ("bnb-nf4", {"double_quant": False}),
        "bnb-fp4-nodq": ("bnb-fp4", {"double_quant": False}),
    }
)
# one case per registered method (its first variant): where one per method is enough
ONE_PER_METHOD = [
    next(c for c, (v, o) in CASES.items() if QuantConfig.from_name(v).method == m) for m in registered_methods()
]


def _contains(big, small) -> bool:
    """``small``'s entries (recursively) are all in ``big``."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _contains(big[k], v) for k, v in small.items())
    return big == small


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config_for(case, **extra):
    name, overrides = CASES[case]
    return QuantConfig.from_name(name, num_samples=16, template=TEMPLATE, device="cpu", **overrides, **extra)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_model_dir, arena_csv):
    """Quantize each case once per module, on demand: ``quantized(case) -> folder``."""
    root = tmp_path_factory.mktemp("quantized")
    done = {}

    def get(case):
        if case not in done:
            done[case] = kdq.quantize(tiny_model_dir, config_for(case), calibration=arena_csv, out_dir=root / case)
        return done[case]

    return get


def _load(folder):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()


@pytest.mark.parametrize("case", list(CASES))
def test_every_method_quantizes_and_reloads_exactly(case, quantized, tiny_model_dir):
    folder = quantized(case)
    config = config_for(case)
    method = get_quantizer(config.method)
    report = read_report(folder)
    assert report.variant == case and report.device == "cpu" and report.dtype == "float32"
    # the saved folder is the model that was in memory: same machine, same kernels, no drift
    assert report.reload_max_abs_delta == 0.0
    # quantization changed the model, but only a little
    assert 0.0 < report.kl_to_source < 0.05 and report.argmax_agreement >= 0.75
    assert report.weights_bytes < report.source_weights_bytes
    assert report.probe_rows == 8 and report.probe_source == "held-out"
    assert report.calibration_rows == (16 if method.needs_calibration else 0)
    assert all(p in report.versions for p in method.wheels)  # the backend's versions are recorded

    cfg = json.loads((folder / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert cfg[TEMPLATE_KEY] == TEMPLATE.to_dict()  # later stages render rows the same way
    assert "input_ids" not in (folder / "config.json").read_text()  # no calibration rows leak into config.json
    # the method owns its folder, and what it says about it without quantizing is what was saved
    assert method_for(folder) is method
    assert _contains(qc, method.quantization_config_for(config)), (qc, method.quantization_config_for(config))
    # every shipped budget profile knows how fast this format runs (an unknown format is an error)
    fmt = weight_format_of(folder)
    for profile in available_budgets():
        assert load_budget(profile).slowdown(fmt) >= 1.0
    # the built-in methods' own details
    if case.startswith("gptq"):
        assert qc["quant_method"] == "gptq" and qc["bits"] == int(case[-1])
        assert qc["dataset"] is None and qc["backend"] == "torch"  # calibration set removed; CPU-safe kernel
    elif case.startswith("bnb"):
        assert qc["load_in_8bit"] == (case == "bnb-int8")
        if case != "bnb-int8":
            assert qc["bnb_4bit_quant_type"] == case.split("-")[1]
            assert qc["bnb_4bit_use_double_quant"] == (not case.endswith("nodq"))

    method.prepare_load("cpu")
    model, source = _load(folder), _load(tiny_model_dir)
    assert is_quantized_layer(model.model.layers[0].self_attn.q_proj)  # the decoder really is quantized
    assert not is_quantized_layer(source.model.layers[0].self_attn.q_proj)
    # the head is never quantized: a plain fp32 Linear holding exactly the source weights
    assert type(model.score) is torch.nn.Linear and model.score.weight.dtype == torch.float32
    assert not is_quantized_layer(model.score)
    assert torch.equal(model.score.weight, source.score.weight)
    assert check_head(model, case) == "score"


def test_stock_transformers_loads_without_kdq(quantized, tmp_path):
    """In a subprocess where ``import kdq`` fails, each folder loads with from_pretrained and
    predicts the probabilities kdq measured in memory."""
    folders = [str(quantized(c)) for c in CASES]
    script = tmp_path / "stock_load.py"
    script.write_text(
        textwrap.dedent("""
        import importlib, importlib.abc, json, sys

        class NoKdq(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "kdq" or name.startswith("kdq."):
                    raise ModuleNotFoundError("kdq is blocked in this process")
                return None

        sys.meta_path.insert(0, NoKdq())
        try:
            importlib.import_module("kdq")
            raise SystemExit("kdq is importable")
        except ModuleNotFoundError:
            pass
        import torch
        from transformers import AutoModelForSequenceClassification

        out = {}
        for folder in sys.argv[1:]:
            probe = json.load(open(folder + "/kdq-quantize.json"))["probe"]["input_ids"]
            model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
            pad = model.config.pad_token_id
            order = sorted(range(len(probe)), key=lambda i: -len(probe[i]))  # longest first, like kdq
            ids = torch.full((len(probe), len(probe[order[0]])), pad)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(order):
                ids[r, :len(probe[i])] = torch.tensor(probe[i])
                mask[r, :len(probe[i])] = 1
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            probs = [None] * len(probe)
            for r, i in enumerate(order):
                probs[i] = torch.softmax(logits[r], -1).tolist()
            out[folder] = probs
        out["kdq_modules"] = sorted(m for m in sys.modules if m == "kdq" or m.startswith("kdq."))
        print("RESULT" + json.dumps(out))
    """)
    )
    # What a CPU user sets for gptqmodel (kdq sets the same defaults in its own process).
    env = {
        **os.environ,
        "TORCH_COMPILE_DISABLE": "1",
        "GPTQMODEL_DISABLE_PACK_EXT": "1",
        "GPTQMODEL_CPU_WORKERS": "2",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, str(script), *folders], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result.pop("kdq_modules") == []
    for folder in folders:
        saved = json.loads(open(os.path.join(folder, REPORT_FILE)).read())
        memory = torch.tensor(saved["probe"]["logits_memory"])
        stock = torch.tensor(result[folder])
        assert torch.allclose(stock, torch.softmax(memory, -1), atol=1e-6), folder


@pytest.mark.parametrize("case", ONE_PER_METHOD)
def test_recheck_catches_a_corrupted_artifact(case, quantized, tmp_path):
    """A real corruption of the saved weights (inverted quantized codes) fails verification."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = quantized(case)
    assert recheck(good) == 0.0
    bad = tmp_path / case
    shutil.copytree(good, bad)
    with safe_open(str(bad / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()  # tensor-subclass formats (torchao) need theirs to reload
    tensors = load_file(str(bad / "model.safetensors"))
    key = max(
        (k for k, t in tensors.items() if "layers.1." in k and not t.dtype.is_floating_point and t.dtype != torch.bool),
        key=lambda k: tensors[k].numel(),
    )
    tensors[key] = torch.bitwise_not(tensors[key])
    save_file(tensors, str(bad / "model.safetensors"), metadata=metadata or {"format": "pt"})
    with pytest.raises(ReloadMismatchError, match=case):
        recheck(bad)


def test_peft_adapter_teacher_is_merged_first(tiny_model_dir, tiny_tokenizer, arena_csv, tmp_path):
    from peft import LoraConfig, get_peft_model

    from kdq.models import load_classifier
    from kdq.runtime.batching import predict_logits

    base = load_classifier(tiny_model_dir).model
    peft_model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # LoRA B starts at zero; make the adapter change the model
            torch.nn.init.normal_(p, std=0.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    tiny_tokenizer.save_pretrained(str(adapter))

    out = kdq.quantize(
        adapter,
        QuantConfig.from_name("bnb-int8", template=TEMPLATE, device="cpu"),
        calibration=arena_csv,
        out_dir=tmp_path / "q",
    )
    saved = json.loads((out / REPORT_FILE).read_text())
    probe, source_logits = saved["probe"]["input_ids"], torch.tensor(saved["probe"]["logits_source"])
    merged = load_classifier(adapter).model
    plain = load_classifier(tiny_model_dir).model
    pad = tiny_tokenizer.pad_token_id
    assert torch.allclose(source_logits, predict_logits(merged, probe, pad, batch_size=len(probe)), atol=1e-5)
    assert not torch.allclose(source_logits, predict_logits(plain, probe, pad, batch_size=len(probe)), atol=1e-3)
    assert read_report(out).kl_to_source < 0.05
    assert not (out / "adapter_config.json").exists()


def test_model_object_and_strings_calibration(tiny_model_dir, tiny_tokenizer, tmp_path):
    from kdq.models import load_classifier

    model = load_classifier(tiny_model_dir).model
    texts = [f"Prompt: question {i}\nResponse A: good answer\nResponse B: bad answer {i}" for i in range(12)]
    out = kdq.quantize(
        model,
        QuantConfig.from_name("bnb-nf4", template=TEMPLATE, device="cpu", probe_rows=4),
        calibration=texts,
        tokenizer=tiny_tokenizer,
        out_dir=tmp_path / "q",
    )
    report = read_report(out)
    assert report.source is None and report.probe_rows == 4 and report.reload_max_abs_delta == 0.0
    assert (out / "tokenizer.json").is_file()  # self-contained: the tokenizer travels with the weights
    with pytest.raises(FileExistsError):
        kdq.quantize(model, QuantConfig.from_name("bnb-nf4", device="cpu"), tokenizer=tiny_tokenizer, out_dir=out)


def test_quality_gate_fails_without_writing(tiny_model_dir, arena_csv, tmp_path):
    cfg = QuantConfig.from_name("bnb-fp4", template=TEMPLATE, device="cpu", max_kl=0.0)
    with pytest.raises(QuantizationError, match=r"bnb-fp4: mean KL.*max_kl=0"):
        kdq.quantize(tiny_model_dir, cfg, calibration=arena_csv, out_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp folders left behind either


def test_quantized_head_is_detected(tiny_model_dir):
    """The check itself: a model whose score layer bitsandbytes did quantize is refused."""
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    bad = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir),
        device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=[]),
    )
    assert type(bad.score).__name__ == "Linear8bitLt"
    with pytest.raises(QuantizationError, match="head 'score' was quantized"):
        check_head(bad, "bnb-int8")


def test_a_tensor_subclass_quantized_head_is_detected(tiny_model_dir):
    """Trap: torchao quantizes by swapping the weight for a tensor subclass. The layer stays a
    plain nn.Linear and the weight still reports a floating dtype, so checking the module class and
    the dtype (as kdq once did) passes a quantized head."""
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForSequenceClassification, TorchAoConfig

    bad = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir),
        device_map={"": "cpu"},
        quantization_config=TorchAoConfig(Int8WeightOnlyConfig(set_inductor_config=False), modules_to_not_convert=[]),
    )
    assert type(bad.score) is torch.nn.Linear and bad.score.weight.dtype.is_floating_point  # looks plain
    assert is_quantized_layer(bad.score)
    with pytest.raises(QuantizationError, match=r"head 'score' was quantized \(Linear, Int8Tensor"):
        check_head(bad, "torchao")


def test_load_classifier_reads_gptq_folders_and_requantizing_is_refused(quantized, tmp_path):
    from kdq.models import load_classifier
    from kdq.runtime.batching import predict_logits

    folder = quantized("gptq-4")
    saved = json.loads((folder / REPORT_FILE).read_text())
    loaded = load_classifier(folder)  # kdq's own loader (evaluate, export) on a quantized folder
    probe = saved["probe"]["input_ids"]
    logits = predict_logits(loaded.model, probe, loaded.tokenizer.pad_token_id, batch_size=len(probe))
    assert torch.equal(logits, torch.tensor(saved["probe"]["logits_memory"]))
    with pytest.raises(ValueError, match=r"already quantized \(gptq\)"):
        kdq.quantize(folder, QuantConfig.from_name("bnb-int8"), out_dir=tmp_path / "twice")
