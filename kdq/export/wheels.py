"""Fill ``wheels/`` with ``pip download`` for the Kaggle platform (Linux x86_64, CPython 3.11 by default).

The notebook has no internet, so every package its image may lack travels in the dataset,
pinned to the version that exported (and verified) the model. Dependencies are read from
the installed packages' metadata and downloaded one by one with ``--no-deps``: letting pip
resolve them would drag in a multi-GB CUDA torch, which the Kaggle image already has and
which must not be replaced.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ..runtime.versions import installed_version
from ..utils.errors import CheckFailed
from .config import KAGGLE_PYTHON_VERSIONS

# Never shipped: the image's CUDA build of torch (and its stack) must stay in place.
IMAGE_PROVIDED = ("torch", "triton", "pytorch-triton", "nvidia-*")
# Always shipped: the exported config and tokenizer files are written by this transformers.
BASE_PACKAGES = ("transformers", "accelerate")


class WheelError(CheckFailed):
    """pip could not download a wheel for the target platform."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def default_packages(quant_method) -> tuple:
    """The root packages for a model quantized with ``quant_method`` (``None``: not quantized);
    the method's own wheels come from its :class:`~kdq.quant_methods.QuantMethod`."""
    from ..quant_methods import wheels_for

    return wheels_for(quant_method) + BASE_PACKAGES


def _requirement(text):
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return Requirement(text)
    except InvalidRequirement as err:
        raise ValueError(
            f"wheel package {text!r} is not a valid requirement ({err}); write e.g. 'bitsandbytes==0.50.2'."
        ) from None


def pin(text: str) -> str:
    """``name==version``: the installed version unless ``text`` pins one already.

    Raises ``ValueError`` for a package that is neither pinned nor installed here: an
    unpinned wheel could differ from the one the model was verified with.
    """
    req = _requirement(text)
    if req.specifier:
        return f"{req.name}{req.specifier}"
    version = installed_version(req.name)
    if version is None:
        raise ValueError(
            f"wheel package {text!r} has no version and is not installed here; pin it, e.g. '{req.name}==X.Y.Z'."
        )
    return f"{req.name}=={version}"


def is_image_provided(name: str) -> bool:
    return any(fnmatch.fnmatch(canonical(name), canonical(p)) for p in IMAGE_PROVIDED)


def closure(roots, python_version: str, *, with_deps: bool = True) -> list:
    """Requirements to download for ``python_version``: the pinned roots and, with
    ``with_deps``, every installed dependency (markers evaluated for that Python), pinned to
    the installed version, minus :data:`IMAGE_PROVIDED`.

    A dependency that is not installed here (say a backport only older Pythons need) is kept
    with its own specifier and downloaded without its dependencies.
    """
    env = {"python_version": python_version, "python_full_version": python_version + ".0", "extra": ""}
    out, seen = [], set()
    queue = [_requirement(pin(r)) for r in roots]
    while queue:
        req = queue.pop(0)
        key = canonical(req.name)
        if key in seen or is_image_provided(key):
            continue
        seen.add(key)
        installed = installed_version(req.name)
        if req.specifier:
            out.append(f"{req.name}{req.specifier}")
        elif installed is not None:
            out.append(f"{req.name}=={installed}")
        else:
            out.append(req.name)
        if not with_deps or installed is None:
            continue
        for dep_text in metadata.requires(req.name) or ():
            dep = _requirement(dep_text)
            if dep.marker is not None and not dep.marker.evaluate(env):
                continue
            if canonical(dep.name) not in seen:
                # Pin to what is installed here when it satisfies the dependency's range.
                dep_version = installed_version(dep.name)
                if dep_version is not None and dep.specifier.contains(dep_version, prereleases=True):
                    queue.append(_requirement(f"{dep.name}=={dep_version}"))
                else:
                    queue.append(_requirement(f"{dep.name}{dep.specifier}"))
    return out


def requires_python_problems(requirements, python_version: str) -> list:
    """Pinned requirements whose ``Requires-Python`` excludes CPython ``python_version``.

    Read from the installed package's metadata when the pin is the installed version (the
    usual case: roots and dependencies are pinned to what is installed here); other pins are
    left to pip. Returns one sentence per problem, naming the package and both versions.
    """
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    problems = []
    for text in requirements:
        req = _requirement(text)
        pinned = [s.version for s in req.specifier if s.operator == "=="]
        if not pinned or installed_version(req.name) != pinned[0]:
            continue
        spec = metadata.metadata(req.name).get("Requires-Python")
        try:
            if spec and not SpecifierSet(spec).contains(python_version + ".0", prereleases=True):
                problems.append(
                    f"{req.name}=={pinned[0]} requires Python {spec} (its Requires-Python), which excludes "
                    f"the requested CPython {python_version}"
                )
        except InvalidSpecifier:
            continue
    return problems


def wheel_name(path) -> str:
    """The canonical project name of a ``.whl`` file (its name up to the first ``-``)."""
    return canonical(Path(path).name.split("-")[0])


def download(requirements, dest, *, python_version: str, platforms, timeout: float = 1800) -> list:
    """``pip download --no-deps --only-binary=:all:`` of ``requirements`` into ``dest`` for
    CPython ``python_version`` on ``platforms``. Returns the wheel files now in ``dest``.

    Raises :class:`WheelError` naming the package pip could not find and how to fix it.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not requirements:
        return sorted(dest.glob("*.whl"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--dest",
        str(dest),
    ]
    for p in platforms:
        cmd += ["--platform", p]
    cmd += list(requirements)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WheelError(
            f"pip download for Python {python_version} took more than {timeout:.0f} s; "
            "check the network or the package index."
        ) from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        found = [ln for ln in lines if "No matching distribution found for" in ln or ln.startswith("ERROR")]
        detail = re.sub(r"\(from versions: [^)]{60,}\)", "(from versions: ...)", "; ".join(found[-2:] or lines[-3:]))
        missing = re.search(r"No matching distribution found for (\S+)", detail)
        what = missing.group(1) if missing else "a package"
        raise WheelError(
            f"pip could not download a wheel of {what} for CPython {python_version} on {list(platforms)}: {detail}. "
            f"Fixes: pin a version that ships binary wheels; or build one on Linux x86_64 with Python {python_version} "
            f"(pip wheel --no-deps '{what}' -w DIR) and pass it in ExportConfig(wheel_files=...); "
            f"or leave it out of ExportConfig(wheel_packages=...)."
        )
    return sorted(dest.glob("*.whl"))


def fill_wheels(dest, *, roots, python_versions, platforms, with_deps: bool, extra_files=()) -> dict:
    """Copy ``extra_files`` and download the closure of ``roots`` for every Python version.

    Returns the manifest record: requirements per version, the files, and the
    ``pip install --no-index --find-links`` arguments (the roots, pinned).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    provided = set()
    for f in extra_files:
        f = Path(f)
        if not f.is_file():
            raise ValueError(f"ExportConfig.wheel_files: {str(f)!r} does not exist.")
        shutil.copy2(f, dest / f.name)
        provided.add(wheel_name(f))
    pinned_roots = [pin(r) for r in roots]
    per_version = {
        pv: [r for r in closure(roots, pv, with_deps=with_deps) if canonical(_requirement(r).name) not in provided]
        for pv in python_versions
    }
    problems = [p for pv, reqs in per_version.items() for p in requires_python_problems(reqs, pv)]
    if problems:  # before any download: a half-filled wheels/ helps nobody
        raise WheelError(
            "; ".join(problems) + ". Fix: drop that version from ExportConfig.wheel_python_versions "
            f"(Kaggle's current image runs CPython {', '.join(KAGGLE_PYTHON_VERSIONS)}), or pin a "
            "release of the package that supports it in ExportConfig.wheel_packages."
        )
    for pv, reqs in per_version.items():
        download(reqs, dest, python_version=pv, platforms=platforms)
    return {
        "python_versions": list(python_versions),
        "platforms": list(platforms),
        "requirements": per_version,
        "provided_files": sorted(Path(f).name for f in extra_files),
        "install_args": pinned_roots,
    }
