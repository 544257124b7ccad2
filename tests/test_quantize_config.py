"""QuantConfig validation, the method registry, calibration rendering, argument errors (no quantization)."""

from __future__ import annotations

import pytest

import kdq
from kdq.data import encode, load_arena
from kdq.quantize import VARIANTS, QuantConfig, QuantMethod, get_quantizer, register_quantizer, registered_methods
from kdq.quantize.calibration import prepare_calibration
from kdq.runtime.template import TemplateConfig

TEMPLATE = TemplateConfig(max_length=96)


@pytest.mark.parametrize(
    "name,method,bits",
    [
        ("gptq-8", "gptq", 8),
        ("gptq-4", "gptq", 4),
        ("bnb-int8", "bnb-int8", 8),
        ("bnb-nf4", "bnb-nf4", 4),
        ("bnb-fp4", "bnb-fp4", 4),
    ],
)
def test_from_name_maps_variants(name, method, bits):
    cfg = QuantConfig.from_name(name)
    assert (cfg.method, cfg.bits, cfg.name) == (method, bits, name)
    assert QuantConfig.from_name(name, probe_rows=3).probe_rows == 3


def test_from_name_unknown_lists_variants():
    with pytest.raises(ValueError) as err:
        QuantConfig.from_name("gptq-3")
    assert all(v in str(err.value) for v in VARIANTS)


def test_unknown_method_lists_registered_ones():
    with pytest.raises(ValueError) as err:
        QuantConfig(method="awq", bits=4)
    msg = str(err.value)
    assert "QuantConfig.method" in msg
    assert set(registered_methods()) >= {"gptq", "bnb-int8", "bnb-nf4", "bnb-fp4"}
    assert all(m in msg for m in registered_methods())


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"method": "gptq"}, "bits"),  # GPTQ needs an explicit bit width
        ({"method": "gptq", "bits": 3}, "bits"),
        ({"method": "bnb-int8", "bits": 4}, "bits"),
        ({"method": "bnb-nf4", "bits": 8}, "bits"),
        ({"method": "gptq", "bits": 4, "group_size": 0}, "group_size"),
        ({"method": "bnb-nf4", "group_size": 64}, "group_size"),  # a GPTQ-only field on bnb
        ({"method": "bnb-int8", "desc_act": True}, "desc_act"),
        ({"method": "gptq", "bits": 8, "double_quant": False}, "double_quant"),  # bnb 4-bit only
        ({"method": "bnb-fp4", "backend": "torch"}, "backend"),
        ({"method": "gptq", "bits": 4, "num_samples": 0}, "num_samples"),
        ({"method": "gptq", "bits": 4, "probe_rows": 0}, "probe_rows"),
        ({"method": "bnb-nf4", "reload_tolerance": -1.0}, "reload_tolerance"),
        ({"method": "bnb-nf4", "max_kl": -0.1}, "max_kl"),
        ({"method": "bnb-nf4", "dtype": "int8"}, "dtype"),
        ({"method": "bnb-nf4", "device": "tpu"}, "device"),
        ({"method": "bnb-nf4", "template": "max_length=64"}, "template"),
    ],
)
def test_invalid_fields_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"QuantConfig\.{field}"):
        QuantConfig(**kwargs)


def test_bnb_bits_are_implied_and_nodq_is_named():
    assert QuantConfig(method="bnb-nf4").bits == 4
    assert QuantConfig(method="bnb-int8").bits == 8
    assert QuantConfig(method="bnb-nf4", double_quant=False).name == "bnb-nf4-nodq"
    assert QuantConfig(method="gptq", bits=4, group_size=-1).to_dict()["group_size"] == -1


def test_registry_is_keyed_by_name_and_refuses_duplicates():
    assert type(get_quantizer("bnb-fp4")).__name__ == "BnbFP4"
    with pytest.raises(ValueError, match="already registered"):

        @register_quantizer("gptq")
        class Again(QuantMethod):
            pass


def test_quantize_rejects_bad_arguments(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="kdq.QuantConfig"):
        kdq.quantize(tiny_model_dir, {"method": "gptq"}, out_dir=tmp_path / "q")
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        kdq.quantize(tiny_model_dir, QuantConfig.from_name("bnb-int8"), out_dir=tmp_path / "exists")
    with pytest.raises(ValueError, match="needs calibration data"):
        kdq.quantize(tiny_model_dir, QuantConfig.from_name("gptq-8", device="cpu"), out_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_calibration_rows_render_exactly_like_training(arena_csv, tiny_tokenizer):
    """GPTQ calibration and the probe use the training template: same ids as kdq.data.encode."""
    rows = load_arena(arena_csv)
    expected = {tuple(ids) for ids in encode(rows, tiny_tokenizer, TEMPLATE)["input_ids"]}
    cal = prepare_calibration(
        arena_csv, tiny_tokenizer, TEMPLATE, num_samples=20, probe_rows=6, seed=0, needs_calibration=True
    )
    assert len(cal.calibration) == 20 and len(cal.probe) == 6 and cal.probe_source == "held-out"
    assert all(tuple(ids) in expected for ids in cal.calibration + cal.probe)
    assert max(len(ids) for ids in cal.calibration) <= TEMPLATE.max_length
    assert not {tuple(i) for i in cal.probe} & {tuple(i) for i in cal.calibration}  # probe held out
    again = prepare_calibration(
        arena_csv, tiny_tokenizer, TEMPLATE, num_samples=20, probe_rows=6, seed=0, needs_calibration=True
    )
    assert again.calibration == cal.calibration and again.probe == cal.probe
    # fewer rows than asked: all rows calibrate, the probe reuses some (and says so)
    small = prepare_calibration(
        arena_csv, tiny_tokenizer, TEMPLATE, num_samples=200, probe_rows=4, seed=0, needs_calibration=True
    )
    assert len(small.calibration) == 64 and small.probe_source == "overlaps-calibration"


def test_calibration_strings_and_errors(tiny_tokenizer):
    cal = prepare_calibration(
        ["good answer " * 80, "bad"],
        tiny_tokenizer,
        TEMPLATE,
        num_samples=2,
        probe_rows=1,
        seed=0,
        needs_calibration=True,
    )
    assert all(ids[0] == tiny_tokenizer.bos_token_id for ids in cal.calibration)
    assert max(len(ids) for ids in cal.calibration) == TEMPLATE.max_length  # truncated like rows
    with pytest.raises(ValueError, match=r"calibration\[1\]"):
        prepare_calibration(
            ["ok", 3], tiny_tokenizer, TEMPLATE, num_samples=2, probe_rows=1, seed=0, needs_calibration=True
        )
    with pytest.raises(ValueError, match="empty list"):
        prepare_calibration([], tiny_tokenizer, TEMPLATE, num_samples=2, probe_rows=1, seed=0, needs_calibration=True)
    synthetic = prepare_calibration(
        None, tiny_tokenizer, TEMPLATE, num_samples=2, probe_rows=3, seed=0, needs_calibration=False
    )
    assert synthetic.calibration == [] and len(synthetic.probe) == 3 and synthetic.probe_source == "synthetic"
    # one probe-row definition (kdq.data.probe): the export's probe rows, whatever the seed
    from kdq.data.probe import probe_turns
    from kdq.runtime.template import render

    again = prepare_calibration(
        None, tiny_tokenizer, TEMPLATE, num_samples=2, probe_rows=3, seed=7, needs_calibration=False
    )
    ids, rows = probe_turns(3)
    assert again.probe == synthetic.probe == render(tiny_tokenizer, rows, TEMPLATE)
    assert probe_turns(5)[1][:3] == rows and len(set(ids)) == 3


def test_builtin_methods_own_their_facts(tmp_path):
    from kdq.quant_methods import method_for, runtime_modules_by_quant_method, wheels_for

    for name in registered_methods():
        m = get_quantizer(name)
        assert m.extra and m.runtime_modules and m.wheels and m.quant_method, name
    bnb = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    assert method_for({"quantization_config": bnb}).name == "bnb-nf4"
    assert method_for({"quantization_config": {**bnb, "bnb_4bit_quant_type": "fp4"}}).name == "bnb-fp4"
    assert (
        method_for({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}).name == "bnb-int8"
    )
    assert method_for({"quantization_config": {"quant_method": "gptq", "bits": 4}}).name == "gptq"
    assert method_for({}) is None and method_for(tmp_path) is None  # not quantized (no config.json at all)
    assert runtime_modules_by_quant_method() == {"bitsandbytes": ("bitsandbytes",), "gptq": ("gptqmodel", "optimum")}
    assert wheels_for(None) == () and wheels_for("gptq") == ("gptqmodel", "optimum")
    with pytest.raises(
        ValueError, match=r"no wheel list for quantization method 'awq'; known: \['bitsandbytes', 'gptq'\]"
    ):
        wheels_for("awq")


def test_a_new_method_is_one_class_and_everything_asks_the_registry(tmp_path):
    """Registered in a subprocess (the registry is process-wide): models, export and the budget
    arithmetic pick up the new method's facts without a change anywhere else."""
    import json
    import subprocess
    import sys
    import textwrap

    folder = tmp_path / "toy-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "toy", "bits": 4}}))
    script = textwrap.dedent("""
        import json, sys
        from kdq.quant_methods import QuantMethod, WeightFormat, method_for, register_quantizer

        @register_quantizer("toy-4")
        class Toy(QuantMethod):
            extra = "toy"
            runtime_modules = ("kdq_toy_backend_that_is_not_installed",)
            wheels = ("kdq-toy-backend",)
            quant_method = "toy"
            allowed_bits = (4,)

            def weight_format(self, qc):
                return WeightFormat("toy-4", 4, 32, 2.0, needs=self.wheels[0])

        folder = sys.argv[1]
        from kdq.evaluate.modelspec import weight_format_of
        from kdq.export.build import settings_record
        from kdq.export.config import ExportConfig
        from kdq.export.wheels import default_packages
        from kdq.models import load_classifier

        out = {"method": method_for(folder).name, "format": weight_format_of(folder).name,
               "wheels": list(default_packages("toy")),
               # predict.py reads the modules to check from kdq-predict.json, which the export writes
               "predict_py_checks": settings_record(
                   ExportConfig(title="toy export", dataset_id="me/toy"), "toy"
               )["backend_modules"] == ["kdq_toy_backend_that_is_not_installed"]}
        try:
            load_classifier(folder)
        except ImportError as err:
            out["load_error"] = str(err)
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["method"], out["format"]) == ("toy-4", "toy-4")
    assert out["wheels"] == ["kdq-toy-backend", "transformers", "accelerate"]
    assert out["predict_py_checks"]
    assert "pip install 'kdq[toy]'" in out["load_error"]  # checked before any weights are read
