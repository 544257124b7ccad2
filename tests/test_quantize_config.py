"""QuantConfig validation, the method registry, calibration rendering, argument errors (no quantization)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import kdq
from kdq.config.io import build_config
from kdq.data import encode, load_arena
from kdq.quant_methods import METHOD_MODULES, method_fields, method_for, settings_fields
from kdq.quantize import (
    MethodSettings,
    QuantConfig,
    QuantMethod,
    get_quantizer,
    register_quantizer,
    registered_methods,
    variant_names,
    variants,
)
from kdq.quantize.calibration import prepare_calibration
from kdq.runtime.template import TemplateConfig

TEMPLATE = TemplateConfig(max_length=96)
COMMON_FIELDS = {"method", "bits", "num_samples", "template", "probe_rows", "reload_tolerance", "max_kl"}
COMMON_FIELDS |= {"device", "dtype", "seed"}


def _first_variant(method: str) -> dict:
    """The QuantConfig fields of ``method``'s first variant (``bits`` where the method needs it)."""
    return next(fields for fields in variants().values() if fields["method"] == method)


@pytest.mark.parametrize("name", variant_names())
def test_every_variant_builds_names_itself_and_round_trips(name):
    fields = variants()[name]
    method = get_quantizer(fields["method"])
    cfg = QuantConfig.from_name(name)
    assert (cfg.method, cfg.name) == (fields["method"], name)
    assert cfg.bits == fields.get("bits", method.allowed_bits[0]) and cfg.bits in method.allowed_bits
    assert QuantConfig.from_name(name, probe_rows=3).probe_rows == 3
    # to_dict holds the common fields and this method's own ones, with their defaults, and rebuilds the config
    assert set(cfg.to_dict()) == COMMON_FIELDS | set(settings_fields(method.settings))
    assert cfg.settings == method.settings(**{k: v for k, v in fields.items() if k not in COMMON_FIELDS})
    assert build_config(QuantConfig, cfg.to_dict()) == cfg
    # the folder this variant saves is this method's, and no other method claims it
    qc = method.quantization_config_for(cfg)
    assert method_for({"quantization_config": qc}) is method
    assert [n for n in registered_methods() if get_quantizer(n).owns(qc)] == [fields["method"]]


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
def test_from_name_maps_the_builtin_variants(name, method, bits):
    cfg = QuantConfig.from_name(name)
    assert (cfg.method, cfg.bits, cfg.name) == (method, bits, name)


def test_from_name_unknown_lists_variants():
    with pytest.raises(ValueError) as err:
        QuantConfig.from_name("gptq-3")
    assert all(v in str(err.value) for v in variant_names())


@pytest.mark.parametrize("method", registered_methods())
def test_a_field_of_another_method_is_refused(method):
    base = _first_variant(method)
    own = settings_fields(get_quantizer(method).settings)
    foreign = [f for f in method_fields() if f not in own]
    for field in foreign:
        with pytest.raises(ValueError, match=rf"QuantConfig\.{field}=.*does not apply to method '{method}'"):
            QuantConfig(**base, **{field: "x"})
        with pytest.raises(ValueError, match=rf"QuantConfig\.{field}=.*does not apply"):
            QuantConfig(**base, options={field: "x"})
    with pytest.raises(ValueError, match=r"no quantization method has a field 'no_such_field'"):
        QuantConfig(**base, options={"no_such_field": 1})


@pytest.mark.parametrize("method", registered_methods())
def test_own_fields_as_keywords_or_options_are_one_config(method):
    base = _first_variant(method)
    own = settings_fields(get_quantizer(method).settings)
    default = QuantConfig(**base)
    assert QuantConfig(**base, **own) == default == QuantConfig(**base, options=own)
    assert {f: getattr(default, f) for f in own} == own  # resolved into the keyword fields
    assert default.options is None and default.settings == get_quantizer(method).settings()


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
        ({"method": "gptq", "bits": 4, "options": {"group_size": 0}}, "group_size"),  # options validate too
        ({"method": "bnb-int8", "options": {"double_quant": False}}, "double_quant"),
        ({"method": "gptq", "bits": 4, "group_size": 32, "options": {"group_size": 64}}, "group_size"),  # twice
        ({"method": "gptq", "bits": 4, "options": [("group_size", 64)]}, "options"),
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
    gptq = QuantConfig(method="gptq", bits=4, options={"group_size": 64})
    assert gptq.group_size == gptq.settings.group_size == 64 and gptq == gptq.replace(group_size=64)
    assert "double_quant" not in gptq.to_dict() and gptq.double_quant is None  # another method's field


def test_registry_is_keyed_by_name_and_refuses_duplicates():
    assert type(get_quantizer("bnb-fp4")).__name__ == "BnbFP4"
    with pytest.raises(ValueError, match="already registered"):

        @register_quantizer("gptq")
        class Again(QuantMethod):
            pass

    with pytest.raises(ValueError, match=r"variant name\(s\) \['gptq-4'\] are taken"):

        @register_quantizer("other-gptq")
        class SameVariant(QuantMethod):
            variants = {"gptq-4": {"bits": 4}}

    class NotADataclass(MethodSettings):
        level: int = 1  # without @dataclass this field would silently not exist

    with pytest.raises(ValueError, match=r"decorated with @dataclass\(frozen=True\)"):

        @register_quantizer("undecorated")
        class Undecorated(QuantMethod):
            settings = NotADataclass

    assert not {"other-gptq", "undecorated"} & set(registered_methods())  # a refused method is not registered


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
    from kdq.quant_methods import runtime_modules_by_quant_method, wheels_for

    for name in registered_methods():
        m = get_quantizer(name)
        assert m.extra and m.runtime_modules and m.wheels and m.quant_method, name
        assert set(m.runtime_modules) <= set(runtime_modules_by_quant_method()[m.quant_method])
        assert set(m.wheels) <= set(wheels_for(m.quant_method))
    bnb = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    assert method_for({"quantization_config": bnb}).name == "bnb-nf4"
    assert method_for({"quantization_config": {**bnb, "bnb_4bit_quant_type": "fp4"}}).name == "bnb-fp4"
    assert (
        method_for({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}).name == "bnb-int8"
    )
    assert method_for({"quantization_config": {"quant_method": "gptq", "bits": 4}}).name == "gptq"
    assert method_for({}) is None and method_for(tmp_path) is None  # not quantized (no config.json at all)
    assert runtime_modules_by_quant_method()["gptq"] == ("gptqmodel", "optimum")
    assert wheels_for(None) == () and wheels_for("gptq") == ("gptqmodel", "optimum")
    known = sorted({get_quantizer(n).quant_method for n in registered_methods()})
    with pytest.raises(
        ValueError, match=rf"no wheel list for quantization method 'awq'; known: {re.escape(str(known))}"
    ):
        wheels_for("awq")


def test_method_and_bits_help_name_every_registered_method_and_variant():
    """The help ``kdq quantize --help`` prints for ``method`` and ``bits`` is read from the registry, so a new
    method (torchao-int8 was once left out) is listed without editing QuantConfig."""
    import dataclasses

    from kdq.config.fields import describe

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(QuantConfig)}
    listed = describe(QuantConfig, width=400)
    for name in registered_methods():
        alone = rf"(?<![\w-]){re.escape(name)}(?![\w-])"  # gptq itself, not only inside gptq-8
        assert re.search(alone, helps["method"]) and re.search(alone, helps["bits"]), name
        assert re.search(alone, listed), name
        bits = " or ".join(map(str, get_quantizer(name).allowed_bits))
        assert f"{name} {bits}" in helps["bits"], name
    for name in variant_names():
        assert name in helps["method"], name


def test_methods_are_discovered_not_listed():
    """Every module of kdq/quant_methods is imported by the package (no registration imports to
    keep in step), and every registered method lives in one of them."""
    import kdq.quant_methods as package

    source = Path(package.__file__).read_text()
    assert "noqa" not in source and "import bnb" not in source and "import gptq" not in source
    files = {p.stem for p in Path(package.__file__).parent.glob("*.py")} - {"__init__", "registry"}
    assert set(METHOD_MODULES) == files
    homes = {type(get_quantizer(n)).__module__ for n in registered_methods()}
    assert homes <= {f"kdq.quant_methods.{m}" for m in METHOD_MODULES}


def test_a_new_method_is_one_class_and_everything_asks_the_registry(tmp_path):
    """Registered in a subprocess (the registry is process-wide): config, CLI, models, export,
    predict.py's record, version tracking and the budget arithmetic pick up the new method's
    facts without a change anywhere else."""
    import json
    import subprocess
    import sys
    import textwrap

    folder = tmp_path / "toy-model"
    folder.mkdir()
    qc = {"quant_method": "toy", "bits": 4, "block": 32}
    (folder / "config.json").write_text(json.dumps({"quantization_config": qc}))
    script = textwrap.dedent("""
        import json, sys
        from dataclasses import dataclass
        from kdq.quant_methods import MethodSettings, QuantMethod, WeightFormat, method_for, register_quantizer
        from kdq.quantize import QuantConfig  # defined before the method registers: its fields go in options

        @dataclass(frozen=True)
        class ToySettings(MethodSettings):
            block: int = 32

            def __post_init__(self):
                if self.block not in (32, 64):
                    raise ValueError(f"QuantConfig.block must be 32 or 64, got {self.block!r}")

        @register_quantizer("toy")
        class Toy(QuantMethod):
            settings = ToySettings
            variants = {"toy-4": {"bits": 4}}
            extra = "toy"
            runtime_modules = ("kdq_toy_backend_that_is_not_installed",)
            wheels = ("kdq-toy-backend",)
            quant_method = "toy"
            allowed_bits = (4,)
            load_env = {"cpu": {"KDQ_TOY_THREADS": "1"}}

            def weight_format(self, qc):
                return WeightFormat("toy-4", 4, qc["block"], 2.0, needs=self.wheels[0])

            def load_overrides(self, qc):
                return {"cuda": {"kernel": "fast"}}

        folder = sys.argv[1]
        from kdq.cli.main import variant_fields
        from kdq.costs.modelspec import weight_format_of
        from kdq.export.build import settings_record
        from kdq.export.config import ExportConfig
        from kdq.export.wheels import default_packages
        from kdq.models import load_classifier
        from kdq.utils.versions import versioned

        qc = json.load(open(folder + "/config.json"))["quantization_config"]
        cfg = QuantConfig.from_name("toy-4", block=64)
        try:
            QuantConfig(method="toy", options={"block": 16})
            refused = None
        except ValueError as err:
            refused = str(err)
        record = settings_record(ExportConfig(title="toy export", dataset_id="me/toy"), qc)
        out = {"method": method_for(folder).name, "format": weight_format_of(folder).name,
               "wheels": list(default_packages("toy")), "cli": variant_fields("toy-4"),
               "config": cfg.to_dict(), "name": cfg.name, "block": cfg.settings.block, "refused": refused,
               # predict.py reads what to check and how to load from kdq-predict.json, which the export writes
               "record": {k: record[k] for k in ("backend_modules", "backend_packages", "load")},
               "versioned": "kdq-toy-backend" in versioned()}
        try:
            load_classifier(folder)
        except ImportError as err:
            out["load_error"] = str(err)
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["method"], out["format"], out["name"]) == ("toy", "toy-4", "toy")
    assert out["cli"] == {"method": "toy", "bits": 4}
    assert out["config"]["options"] == {"block": 64} and out["block"] == 64  # registered after QuantConfig
    assert "QuantConfig.block must be 32 or 64" in out["refused"]
    assert out["wheels"] == ["kdq-toy-backend", "transformers", "accelerate"]
    assert out["record"] == {
        "backend_modules": ["kdq_toy_backend_that_is_not_installed"],
        "backend_packages": ["kdq-toy-backend"],
        "load": {"cpu": {"env": {"KDQ_TOY_THREADS": "1"}}, "cuda": {"quantization_config": {"kernel": "fast"}}},
    }
    assert out["versioned"]
    assert "pip install 'kdq[toy]'" in out["load_error"]  # checked before any weights are read
