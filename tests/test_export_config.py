"""ExportConfig validation: Kaggle's title / id / licence rules, and errors that name the field."""

from __future__ import annotations

import dataclasses

import pytest

from kdq import ExportConfig
from kdq.export import KAGGLE_LICENSES
from kdq.runtime.template import TemplateConfig

OK = dict(title="Danube3 500M arena student", dataset_id="someone/danube3-500m-arena")


def test_defaults_are_valid_and_frozen():
    c = ExportConfig(**OK)
    assert c.licenses == ("apache-2.0",) and c.slug == "danube3-500m-arena" and not c.overwrite
    assert c.dataset_metadata() == {"title": OK["title"], "id": OK["dataset_id"], "licenses": [{"name": "apache-2.0"}]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.title = "changed title"
    assert "apache-2.0" in KAGGLE_LICENSES and "CC0-1.0" in KAGGLE_LICENSES


def test_configs_are_copied_read_only_and_recorded():
    record = {"quantize": {"method": "gptq"}}
    c = ExportConfig(**OK, configs=record, template=TemplateConfig(max_length=64))
    record["quantize"] = "changed"
    assert c.configs["quantize"] == {"method": "gptq"}
    with pytest.raises(TypeError):
        c.configs["x"] = 1
    assert c.to_dict()["template"] == {"max_length": 64, "min_part_share": 0.15, "add_bos": True}


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("title", "Tiny", r"ExportConfig.title must be a string of 6 to 50"),
        ("title", "x" * 51, r"ExportConfig.title"),
        ("dataset_id", "no-slash", r"ExportConfig.dataset_id .*owner/slug"),
        ("dataset_id", "a/b/c", r"owner/slug"),
        ("dataset_id", "someone/ab", r"slug 'ab' has 2 characters"),
        ("dataset_id", "someone/Big_Slug", r"lower-case letters, digits and hyphens"),
        ("dataset_id", "Some One/slug-ok", r"owner 'Some One'"),
        ("licenses", ("MIT-ish",), r"ExportConfig.licenses must be exactly one of"),
        ("licenses", ("CC0-1.0", "apache-2.0"), r"exactly one"),
        ("batch_size", 0, r"ExportConfig.batch_size"),
        ("probe_atol", 0.0, r"ExportConfig.probe_atol"),
        ("tta", "yes", r"ExportConfig.tta must be True or False"),
        ("wheel_python_versions", 3.10, r"ExportConfig.wheel_python_versions must be a tuple"),
        ("wheel_python_versions", ("310",), r"'X.Y'"),
        ("wheel_files", ("gptqmodel.tar.gz",), r"ExportConfig.wheel_files must be paths to .whl"),
        ("template", "max_length=64", r"ExportConfig.template must be a kdq.TemplateConfig"),
        ("configs", ["not", "a", "mapping"], r"ExportConfig.configs must be a mapping"),
    ],
)
def test_bad_values_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        ExportConfig(**{**OK, field: value})


def test_single_licence_string_is_accepted():
    assert ExportConfig(**OK, licenses="CC-BY-4.0").licenses == ("CC-BY-4.0",)
