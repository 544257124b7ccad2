"""ExportConfig and the Kaggle dataset rules it enforces (stdlib only)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from types import MappingProxyType

from ..config.base import Config
from ..config.validate import check_choice, check_range, check_tta
from ..runtime.constants import DEFAULT_TTA_FRACTION, tta_mode
from ..runtime.template import TemplateConfig

# Licence names the Kaggle CLI accepts in dataset-metadata.json
# (https://github.com/Kaggle/kaggle-api/blob/main/docs/datasets_metadata.md).
KAGGLE_LICENSES = (
    "CC0-1.0",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "CC-BY-NC-SA-4.0",
    "GPL-2.0",
    "ODbL-1.0",
    "DbCL-1.0",
    "copyright-authors",
    "other",
    "unknown",
    "CC-BY-4.0",
    "CC-BY-NC-4.0",
    "PDDL",
    "CC-BY-3.0",
    "CC-BY-3.0-IGO",
    "US-Government-Works",
    "CC-BY-NC-SA-3.0-IGO",
    "CDLA-Permissive-1.0",
    "CDLA-Sharing-1.0",
    "CC-BY-ND-4.0",
    "CC-BY-NC-ND-4.0",
    "ODC-BY-1.0",
    "LGPL-3.0",
    "AGPL-3.0",
    "FDL-1.3",
    "EU-ODP-Legal-Notice",
    "apache-2.0",
    "GPL-3.0",
)
TITLE_LENGTH = (6, 50)  # Kaggle: "must be between 6 and 50 characters"
SLUG_LENGTH = (3, 50)  # Kaggle: dataset slug "between 3 and 50 characters"
# Kaggle slugs and user names are lower-case letters, digits and hyphens (no leading hyphen).
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
PYTHON_VERSION_RE = re.compile(r"^3\.\d{1,2}$")
# Kaggle's current notebook image runs CPython 3.11 (the pinned transformers 5 needs >= 3.10 anyway).
KAGGLE_PYTHON_VERSIONS = ("3.11",)
# What unquantized weights are stored as: fp16 (a T4 has no bf16), or fp32 when fp16 overflows.
WEIGHT_DTYPES = ("float16", "float32")
# glibc tags a Kaggle image (Ubuntu 22.04, glibc 2.35) can install; pip needs each one named
# explicitly with --platform, or it rejects e.g. bitsandbytes' manylinux_2_24 wheel.
DEFAULT_PLATFORMS = (
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_35_x86_64",
)


def dataset_id_problems(dataset_id) -> list:
    """Why ``dataset_id`` is not a valid Kaggle ``owner/slug`` (empty list when it is)."""
    if not isinstance(dataset_id, str) or dataset_id.count("/") != 1:
        return [f"must look like 'owner/slug', got {dataset_id!r}"]
    owner, slug = dataset_id.split("/")
    problems = []
    if not _SLUG_RE.match(owner):
        problems.append(f"owner {owner!r} must be a Kaggle user name: lower-case letters, digits and hyphens")
    if not _SLUG_RE.match(slug):
        problems.append(f"slug {slug!r} must use lower-case letters, digits and hyphens only")
    if not SLUG_LENGTH[0] <= len(slug) <= SLUG_LENGTH[1]:
        problems.append(f"slug {slug!r} has {len(slug)} characters; Kaggle needs {SLUG_LENGTH[0]} to {SLUG_LENGTH[1]}")
    return problems


def dataset_metadata_problems(meta) -> list:
    """Check a ``dataset-metadata.json`` dict against the Kaggle CLI rules.

    Returns a list of human-readable problems (empty when valid): ``title`` of 6 to 50
    characters, ``id`` as ``owner/slug``, and ``licenses`` with exactly one entry whose
    ``name`` is a licence Kaggle knows.
    """
    if not isinstance(meta, dict):
        return [f"dataset-metadata.json must hold a JSON object, got {type(meta).__name__}"]
    problems = []
    title = meta.get("title")
    if not isinstance(title, str) or not TITLE_LENGTH[0] <= len(title) <= TITLE_LENGTH[1]:
        problems.append(f"title must be a string of {TITLE_LENGTH[0]} to {TITLE_LENGTH[1]} characters, got {title!r}")
    problems += [f"id: {p}" for p in dataset_id_problems(meta.get("id"))]
    lic = meta.get("licenses")
    if not (isinstance(lic, list) and len(lic) == 1 and isinstance(lic[0], dict)):
        problems.append(f"licenses must be a list with exactly one {{'name': ...}} entry, got {lic!r}")
    elif lic[0].get("name") not in KAGGLE_LICENSES:
        problems.append(
            f"licenses[0].name {lic[0].get('name')!r} is not a Kaggle licence; use one of {list(KAGGLE_LICENSES)}"
        )
    return problems


def _tuple_of_str(cls, name, value) -> tuple:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{cls}.{name} must be a tuple of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class ExportConfig(Config):
    """How :func:`kdq.export` packs a model into a Kaggle dataset folder.

    Args:
        title: Kaggle dataset title, 6 to 50 characters.
        dataset_id: ``"owner/slug"``: your Kaggle user name and the dataset's URL slug.
        licenses: exactly one Kaggle licence name (Danube3 is Apache-2.0, hence the default).
        overwrite: replace an existing output folder (only once the new one is complete).
        tta: default of predict.py's ``--tta``: ``"full"`` (or ``True``) averages each row with
            its A/B-swapped copy (twice the compute, usually a lower log loss); ``"gated"``
            swap-scores only the ``tta_fraction`` least confident rows; ``"none"`` (or ``False``).
            Stored as the mode name.
        tta_fraction: the share of rows gated TTA swap-scores.
        weights_dtype: how unquantized weights are stored: ``"float16"`` (default; half the
            bytes, and what a T4 computes in) or ``"float32"``. The export checks fp16 against
            fp32 on the probe rows (finite, within ``fp16_atol``) and says when to fall back.
        fp16_atol: largest allowed |Δ probability| between fp16 and fp32 compute on the probe rows.
        batch_size: default of predict.py's ``--batch-size`` (rows per forward pass per GPU).
        max_batch_tokens: optional default cap on ``rows x longest row`` per batch.
        template: the row template; ``None`` uses the one recorded in the model's config
            (``kdq_template``), else ``TemplateConfig()``. A template that contradicts the
            recorded one is an error: the notebook must render rows as training did.
        probe_rows: synthetic rows scored at export time; verify re-scores them.
        probe_atol: largest allowed |Δ probability| between the exported predict.py and
            kdq's own pipeline on the source model, and at verify time.
        wheels: fill ``wheels/`` with ``pip download`` for the Kaggle platform.
        wheel_packages: the packages to ship; ``None`` derives them from the model:
            transformers and accelerate, plus gptqmodel+optimum for GPTQ or bitsandbytes for
            bnb. Entries are pinned to the version installed here unless pinned already.
        wheel_deps: also ship their dependencies (read from the installed metadata), except
            torch and its CUDA stack, which the Kaggle image provides.
        wheel_python_versions: target interpreters (default: Kaggle's current image, 3.11). A
            pinned package whose ``Requires-Python`` excludes one is an error before any download.
        wheel_platforms: pip ``--platform`` tags accepted on the target.
        wheel_files: local ``.whl`` files to ship as well (e.g. a gptqmodel wheel you built:
            it has no binary wheel on PyPI); their packages are not downloaded.
        configs: free-form record for the manifest, e.g. ``{"distill": DistillConfig(...),
            "quantize": QuantConfig(...), "eval": EvalConfig(...)}``; dataclasses are converted
            with ``dataclasses.asdict``.
        sources: source model folders (or names) -> fingerprint; ``None`` values are
            fingerprinted from the folder at export time.
        description: one paragraph for the model card.
    """

    title: str
    dataset_id: str
    licenses: tuple = ("apache-2.0",)
    overwrite: bool = False
    tta: object = "full"
    tta_fraction: float = DEFAULT_TTA_FRACTION
    weights_dtype: str = "float16"
    fp16_atol: float = 2e-3
    batch_size: int = 8
    max_batch_tokens: int | None = None
    template: TemplateConfig | None = None
    probe_rows: int = 6
    probe_atol: float = 1e-4
    wheels: bool = False
    wheel_packages: tuple | None = None
    wheel_deps: bool = True
    wheel_python_versions: tuple = KAGGLE_PYTHON_VERSIONS
    wheel_platforms: tuple = DEFAULT_PLATFORMS
    wheel_files: tuple = ()
    configs: object = field(default_factory=dict, hash=False)
    sources: object = field(default_factory=dict, hash=False)
    description: str = ""

    def __post_init__(self):
        cls = "ExportConfig"
        self._accept_dicts()
        if not isinstance(self.title, str) or not TITLE_LENGTH[0] <= len(self.title) <= TITLE_LENGTH[1]:
            raise ValueError(
                f"{cls}.title must be a string of {TITLE_LENGTH[0]} to {TITLE_LENGTH[1]} characters "
                f"(a Kaggle rule), got {self.title!r} ({len(str(self.title))} characters)"
            )
        problems = dataset_id_problems(self.dataset_id)
        if problems:
            raise ValueError(
                f"{cls}.dataset_id {self.dataset_id!r}: "
                + "; ".join(problems)
                + ". Example: 'your-kaggle-name/danube3-500m-arena'."
            )
        licenses = (self.licenses,) if isinstance(self.licenses, str) else _tuple_of_str(cls, "licenses", self.licenses)
        if len(licenses) != 1 or licenses[0] not in KAGGLE_LICENSES:
            raise ValueError(f"{cls}.licenses must be exactly one of {list(KAGGLE_LICENSES)}, got {self.licenses!r}")
        object.__setattr__(self, "licenses", licenses)
        for name in ("overwrite", "wheels", "wheel_deps"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{cls}.{name} must be True or False, got {getattr(self, name)!r}")
        check_tta(cls, self.tta)
        object.__setattr__(self, "tta", tta_mode(self.tta))
        check_range(cls, "tta_fraction", self.tta_fraction, 0.0, 1.0)
        check_choice(cls, "weights_dtype", self.weights_dtype, WEIGHT_DTYPES)
        check_range(cls, "fp16_atol", self.fp16_atol, 0.0, 1.0, lo_open=True)
        check_range(cls, "batch_size", self.batch_size, 1, 4096, kind=int)
        if self.max_batch_tokens is not None:
            check_range(cls, "max_batch_tokens", self.max_batch_tokens, 32, None, kind=int)
        check_range(cls, "probe_rows", self.probe_rows, 1, 256, kind=int)
        check_range(cls, "probe_atol", self.probe_atol, 0.0, 1.0, lo_open=True)
        if self.template is not None:
            if not isinstance(self.template, TemplateConfig):
                raise ValueError(
                    f"{cls}.template must be a kdq.TemplateConfig or None, got {type(self.template).__name__}"
                )
        if self.wheel_packages is not None:
            object.__setattr__(self, "wheel_packages", _tuple_of_str(cls, "wheel_packages", self.wheel_packages))
        versions = _tuple_of_str(cls, "wheel_python_versions", self.wheel_python_versions)
        bad = [v for v in versions if not PYTHON_VERSION_RE.match(v)]
        if bad or not versions:
            raise ValueError(
                f"{cls}.wheel_python_versions must be non-empty 'X.Y' strings such as ('3.10', '3.11'), "
                f"got {self.wheel_python_versions!r}"
            )
        object.__setattr__(self, "wheel_python_versions", versions)
        platforms = _tuple_of_str(cls, "wheel_platforms", self.wheel_platforms)
        if not platforms:
            raise ValueError(
                f"{cls}.wheel_platforms must name at least one pip platform tag, e.g. {DEFAULT_PLATFORMS[0]!r}"
            )
        object.__setattr__(self, "wheel_platforms", platforms)
        files = tuple(str(f) for f in self.wheel_files)
        bad = [f for f in files if not f.endswith(".whl")]
        if bad:
            raise ValueError(f"{cls}.wheel_files must be paths to .whl files, got {bad}")
        object.__setattr__(self, "wheel_files", files)
        for name in ("configs", "sources"):
            value = getattr(self, name)
            if not hasattr(value, "items"):
                raise ValueError(f"{cls}.{name} must be a mapping (dict), got {type(value).__name__}")
            # Read-only copy: a frozen config must not change under the caller's feet.
            object.__setattr__(self, name, MappingProxyType(dict(value)))
        if not isinstance(self.description, str):
            raise ValueError(f"{cls}.description must be a string, got {type(self.description).__name__}")

    @property
    def slug(self) -> str:
        return self.dataset_id.split("/")[1]

    def dataset_metadata(self, description: str = "") -> dict:
        """The ``dataset-metadata.json`` content for the Kaggle CLI."""
        meta = {"title": self.title, "id": self.dataset_id, "licenses": [{"name": self.licenses[0]}]}
        if description:
            meta["description"] = description
        return meta

    def to_dict(self) -> dict:
        """JSON-able summary for the manifest (configs and sources are recorded separately)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in ("configs", "sources"):
                continue
            value = getattr(self, f.name)
            out[f.name] = (
                value.to_dict() if hasattr(value, "to_dict") else (list(value) if isinstance(value, tuple) else value)
            )
        return out
