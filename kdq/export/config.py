"""ExportConfig and the Kaggle dataset rules it enforces (stdlib only)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..config.base import Config
from ..config.validate import check_choice, check_range, check_tta
from ..data.probe import ARENA_LIKE_ROWS
from ..runtime.constants import DEFAULT_BUDGET_NAME, DEFAULT_TTA_FRACTION, tta_mode
from ..runtime.template import MIN_MAX_LENGTH, TemplateConfig

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
# What unquantized weights are stored as: fp16 (a T4 has no bf16; half the bytes), or fp32 (exact).
WEIGHT_DTYPES = ("float16", "float32")
# What the export does when fp16 compute is non-finite or off on a check row: refuse, or record in
# kdq-predict.json that predict.py computes in fp32 on CUDA (whatever the weights are stored as).
FP16_FALLBACKS = ("refuse", "fp32-compute")
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


def describe_rows(rows):
    """What the manifest records of ``ExportConfig.check_rows``: ``None``, the path as given, or
    ``{"in_memory": type name, "rows": count}`` (never the rows themselves)."""
    if rows is None or isinstance(rows, str):
        return rows
    if isinstance(rows, Mapping):  # a dict of columns
        first = next(iter(rows.values()), ())
        n = len(first) if hasattr(first, "__len__") else None
    else:
        n = len(rows) if hasattr(rows, "__len__") else None
    return {"in_memory": type(rows).__name__, "rows": n}


def _check_rows_value(cls, value):
    """``check_rows`` as kept: ``None``, a path (``str``), or in-memory rows (a tuple for a list)."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{cls}.check_rows must be a path to arena rows (.csv or .parquet), got ''")
        return value
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, (tuple, Mapping)) or hasattr(value, "column_names") or hasattr(value, "columns"):
        return value
    raise ValueError(
        f"{cls}.check_rows must be None or arena rows kdq.load_arena reads (a .csv/.parquet path, a pandas "
        f"DataFrame, a datasets.Dataset, a dict of columns or a list of row dicts), got {type(value).__name__}"
    )


def _tuple_of_str(cls, name, value) -> tuple:
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{cls}.{name} must be a tuple of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class ExportConfig(Config):
    """How :func:`kdq.export` packs a model into a Kaggle dataset folder.

    For unquantized weights the export computes fp16 against fp32 on the probe rows, kdq's arena-like
    rows (code, maths, markup, long numbers, non-English text: :func:`kdq.data.probe.arena_like_rows`)
    and up to ``check_rows_max`` of your ``check_rows``; a row that is non-finite in fp16 or off by more
    than ``fp16_atol`` makes it refuse (naming the row) or, with ``fp16_fallback="fp32-compute"``,
    record that predict.py must compute in fp32 on CUDA. A ``template`` that contradicts the one
    recorded in the model is an error: the notebook must render rows as training did. Wheel
    entries are pinned to the versions installed here unless pinned already. Each field's help
    is in its metadata (``kdq export --help`` lists them).
    """

    title: str = field(metadata={"help": "Kaggle dataset title, 6 to 50 characters"})
    dataset_id: str = field(metadata={"help": "owner/slug: your Kaggle user name and the dataset's URL slug"})
    licenses: tuple = field(
        default=("apache-2.0",),
        metadata={"help": "exactly one Kaggle licence name (Danube3 is Apache-2.0, hence the default)"},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "replace an existing output folder (once the new one is complete)"}
    )
    tta: object = field(
        default="full",
        metadata={
            "help": "predict.py's default swap TTA: full/true (every row also A/B-swapped), gated (the "
            "tta_fraction least confident rows), none/false; stored as the mode name"
        },
    )
    tta_fraction: float = field(
        default=DEFAULT_TTA_FRACTION, metadata={"help": "the share of rows gated TTA swap-scores"}
    )
    weights_dtype: str = field(
        default="float16",
        metadata={
            "help": "how unquantized weights are stored: float16 (half the bytes; what a T4 computes in) or float32"
        },
    )
    fp16_atol: float = field(
        default=2e-3,
        metadata={"help": "largest allowed |Δp| of fp16 against fp32 compute on every row of the fp16 check"},
    )
    fp16_fallback: str = field(
        default="refuse",
        metadata={
            "help": "when fp16 compute is non-finite or off by more than fp16_atol on a check row: refuse (an "
            "error naming the row and the options) or fp32-compute (kdq-predict.json records that predict.py "
            "computes in fp32 on CUDA: several times slower on a T4)"
        },
    )
    check_rows: object = field(
        default=None,
        hash=False,
        compare=False,
        metadata={
            "help": "your arena rows (a .csv/.parquet path, or rows kdq.load_arena reads) that the fp16 check "
            "computes besides the probe and kdq's arena-like rows, e.g. the eval rows; the manifest records "
            "where they came from and how many, not the rows"
        },
    )
    check_rows_max: int = field(
        default=64, metadata={"help": "at most this many of check_rows are checked (evenly spaced over them)"}
    )
    arena_like_rows: int = field(
        default=ARENA_LIKE_ROWS,
        metadata={
            "help": f"how many of kdq's {ARENA_LIKE_ROWS} arena-like rows (code, maths, markup, numbers, non-English; "
            "spread over the kinds) the fp16 check computes; fewer cost less on a CPU, 0 leaves only the probe "
            "and check_rows"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "predict.py's default rows per forward pass per GPU"})
    max_batch_tokens: int | None = field(
        default=None, metadata={"help": "predict.py's optional default cap on rows x longest row per batch"}
    )
    template: TemplateConfig | None = field(
        default=None, metadata={"help": "row template; null: the one recorded in the model, else the default"}
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": f"the inference max_length (an int >= {MIN_MAX_LENGTH}) predict.py renders rows at, recorded in "
            "kdq-predict.json (predict.py --max-length overrides it); it may differ from the training template's "
            "(the probe and the fp16 check use it too); kdq.sweep_lengths measures what it costs and saves; "
            "null: the template's"
        },
    )
    probe_rows: int = field(default=6, metadata={"help": "synthetic rows scored at export time; verify re-scores them"})
    probe_atol: float = field(
        default=1e-4,
        metadata={"help": "largest allowed |Δp| between the exported predict.py and kdq on the source model"},
    )
    budget: str = field(
        default=DEFAULT_BUDGET_NAME,
        metadata={"help": "budget profile (name or JSON path) whose time limit and rows predict.py's ETA checks"},
    )
    wheels: bool = field(default=False, metadata={"help": "fill wheels/ with pip download for the Kaggle platform"})
    wheel_packages: tuple | None = field(
        default=None,
        metadata={"help": "packages to ship; null: transformers, accelerate and the quantization method's wheels"},
    )
    wheel_deps: bool = field(
        default=True, metadata={"help": "also ship their dependencies, except torch and its CUDA stack"}
    )
    wheel_python_versions: tuple = field(
        default=KAGGLE_PYTHON_VERSIONS,
        metadata={"help": "target interpreters, X.Y (default: Kaggle's current image)"},
    )
    wheel_platforms: tuple = field(
        default=DEFAULT_PLATFORMS, metadata={"help": "pip --platform tags accepted on the target"}
    )
    wheel_files: tuple = field(
        default=(), metadata={"help": "local .whl files to ship as well; their packages are not downloaded"}
    )
    configs: object = field(
        default_factory=dict,
        hash=False,
        metadata={"help": "free-form record for the manifest, e.g. {distill: DistillConfig(...)}"},
    )
    sources: object = field(
        default_factory=dict,
        hash=False,
        metadata={"help": "source folders (or names) -> fingerprint; null values are fingerprinted at export"},
    )
    description: str = field(default="", metadata={"help": "one paragraph for the model card"})

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
        check_choice(cls, "fp16_fallback", self.fp16_fallback, FP16_FALLBACKS)
        object.__setattr__(self, "check_rows", _check_rows_value(cls, self.check_rows))
        check_range(cls, "check_rows_max", self.check_rows_max, 1, 100_000, kind=int)
        check_range(cls, "batch_size", self.batch_size, 1, 4096, kind=int)
        if self.max_batch_tokens is not None:
            check_range(cls, "max_batch_tokens", self.max_batch_tokens, 32, None, kind=int)
        if self.max_length is not None:
            check_range(cls, "max_length", self.max_length, MIN_MAX_LENGTH, kind=int)
        check_range(cls, "probe_rows", self.probe_rows, 1, 256, kind=int)
        check_range(cls, "arena_like_rows", self.arena_like_rows, 0, ARENA_LIKE_ROWS, kind=int)
        check_range(cls, "probe_atol", self.probe_atol, 0.0, 1.0, lo_open=True)
        if isinstance(self.budget, os.PathLike):
            object.__setattr__(self, "budget", os.fspath(self.budget))
        if not isinstance(self.budget, str) or not self.budget:
            raise ValueError(
                f"{cls}.budget must be a budget profile name or JSON path, e.g. 'lmsys-2xt4', got {self.budget!r}"
            )
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
            if f.name == "check_rows":  # where they came from and how many, not the rows
                out[f.name] = describe_rows(value)
                continue
            out[f.name] = (
                value.to_dict() if hasattr(value, "to_dict") else (list(value) if isinstance(value, tuple) else value)
            )
        return out
