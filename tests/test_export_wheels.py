"""wheels/: which packages ship (pinned, torch never), a real pip download of one tiny wheel,
and a failed download that leaves no folder behind."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
from _net import pypi_reachable

from kdq.export import ExportConfig, ExportError, export
from kdq.export.wheels import closure, default_packages, is_image_provided, pin, wheel_name
from kdq.runtime.template import TemplateConfig

needs_pypi = pytest.mark.skipif(not pypi_reachable(), reason="pip download needs PyPI (pypi.org:443 unreachable)")


def _config(**kw):
    return ExportConfig(
        title="Tiny arena classifier",
        dataset_id="kdq-tests/tiny-wheels",
        wheels=True,
        template=TemplateConfig(max_length=96),
        tta=False,
        probe_rows=2,
        **kw,
    )


def test_default_packages_follow_the_quantization():
    assert default_packages("gptq")[:2] == ("gptqmodel", "optimum")
    assert default_packages("bitsandbytes")[0] == "bitsandbytes"
    assert "transformers" in default_packages(None) and "bitsandbytes" not in default_packages(None)
    with pytest.raises(ValueError, match="no wheel list for quantization method 'awq'"):
        default_packages("awq")


@pytest.mark.parametrize("python_version", ["3.11", "3.12"])
def test_closure_is_pinned_and_never_ships_torch(python_version):
    reqs = closure(default_packages("bitsandbytes"), python_version)
    names = [r.split("==")[0].split(">")[0].lower().replace("_", "-") for r in reqs]
    assert names[0] == "bitsandbytes" and "transformers" in names and "numpy" in names
    assert not any(is_image_provided(n) for n in names) and "torch" not in names
    installed = [r for r in reqs if "==" in r]
    for r in installed:  # pinned to exactly what is installed here
        name, version = r.split("==")
        assert metadata.version(name) == version
    assert len(installed) >= len(reqs) - 3  # only backports for other Pythons stay unpinned
    assert len(names) == len(set(names))


def test_pins_and_names():
    assert pin("filelock") == f"filelock=={metadata.version('filelock')}"
    assert pin("filelock==3.0.0") == "filelock==3.0.0"
    with pytest.raises(ValueError, match="has no version and is not installed here"):
        pin("kdq-surely-not-installed-pkg")
    assert is_image_provided("nvidia-cublas-cu12") and is_image_provided("torch") and not is_image_provided("numpy")
    assert wheel_name("/x/Gptq_Model-7.6.0-cp311-cp311-linux_x86_64.whl") == "gptq-model"


@needs_pypi
def test_wheels_are_downloaded_for_each_python_and_listed(tmp_path, tiny_model_dir):
    # An old, tiny, pure-Python release that any PyPI mirror holds (the installed one may be newer).
    out = export(
        tiny_model_dir,
        tmp_path / "out",
        _config(wheel_packages=("filelock==3.12.4",), wheel_python_versions=("3.11", "3.12")),
    )
    wheels = sorted(p.name for p in (out / "wheels").iterdir())
    assert wheels == ["filelock-3.12.4-py3-none-any.whl"]  # pure wheel: one file serves 3.11 and 3.12
    manifest = json.loads((out / "kdq-manifest.json").read_text())
    assert manifest["files"][f"wheels/{wheels[0]}"]["role"] == "wheel"
    assert manifest["wheels"]["requirements"] == {"3.11": ["filelock==3.12.4"], "3.12": ["filelock==3.12.4"]}
    line = "pip install --no-index --find-links /kaggle/input/tiny-wheels/wheels filelock==3.12.4"
    assert line in (out / "README.md").read_text()


@needs_pypi
def test_failed_download_fails_the_export_and_leaves_nothing(tmp_path, tiny_model_dir):
    with pytest.raises(ExportError, match=r"filelock==0\.0\.0 .*wheel_files"):
        export(tiny_model_dir, tmp_path / "out", _config(wheel_packages=("filelock==0.0.0",)))
    assert list(tmp_path.iterdir()) == []


def test_requires_python_that_excludes_a_version_fails_before_any_download(tmp_path, tiny_model_dir, monkeypatch):
    from kdq.export import wheels

    # The installed transformers' own metadata: Requires-Python >= 3.11 (5.x), so 3.10 cannot work.
    spec = metadata.metadata("transformers")["Requires-Python"]
    assert spec and not __import__("packaging.specifiers").specifiers.SpecifierSet(spec).contains("3.10.0")
    calls = []
    monkeypatch.setattr(wheels, "download", lambda *a, **k: calls.append(a))  # would be a network call
    with pytest.raises(
        ExportError,
        match=rf"transformers=={metadata.version('transformers')} requires Python "
        rf"{spec} .* excludes the requested CPython 3\.10.*wheel_python_versions",
    ):
        export(
            tiny_model_dir,
            tmp_path / "out",
            _config(wheel_packages=("transformers",), wheel_python_versions=("3.11", "3.10")),
        )
    assert calls == [] and list(tmp_path.iterdir()) == []
    assert ExportConfig(title="Tiny arena classifier", dataset_id="a/bcd").wheel_python_versions == ("3.11",)


def test_local_wheel_files_are_shipped_without_download(tmp_path, tiny_model_dir):
    # A wheel built elsewhere (e.g. gptqmodel, which has no binary on PyPI); no network needed.
    wheel = tmp_path / "src" / "kdqtinydep-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip: shipped as bytes, never installed here
    out = export(
        tiny_model_dir, tmp_path / "out", _config(wheel_packages=("kdqtinydep==1.0",), wheel_files=(str(wheel),))
    )
    assert (out / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    manifest = json.loads((out / "kdq-manifest.json").read_text())
    assert manifest["wheels"]["requirements"] == {"3.11": []}  # the default: Kaggle's current image
    assert "--find-links /kaggle/input/tiny-wheels/wheels kdqtinydep==1.0" in (out / "README.md").read_text()
