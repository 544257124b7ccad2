"""Facts shared by kdq and every exported ``predict.py`` (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass

HEADLINE_METRICS = ("log_loss", "accuracy")  # what a competition scores by (kdq.evaluate computes both)
SUBMISSIONS = ("probabilities", "argmax")  # one column of probabilities per class / the arg-max class's name


@dataclass(frozen=True)
class LabelScheme:
    """What a competition's rows and submission mean: the one definition of its classes.

    ``labels``: the class names in class-id order (a model's ``id2label``). ``swap``: class ``c``
    of a row is class ``swap[c]`` of its A/B-swapped copy. ``winner_column``: the column holding
    the winner's name (``None``: one one-hot column per class, named like the class).
    ``plain_turns``: the text cells are plain strings, one turn each (else JSON lists of turns).
    ``submission``: ``"probabilities"`` (``id`` + one column per class) or ``"argmax"`` (``id`` +
    ``winner_column`` holding the most probable class's name). ``headline``: the metric the
    competition scores by, which kdq's reports and recommendation rank by. ``test_path``: the
    competition's test file in a Kaggle notebook.
    """

    name: str
    competition: str
    labels: tuple
    swap: tuple
    winner_column: str | None
    plain_turns: bool
    submission: str
    headline: str
    test_path: str

    def __post_init__(self):
        n = len(self.labels)
        if n < 2 or sorted(self.swap) != list(range(n)) or any(self.swap[self.swap[c]] != c for c in range(n)):
            raise ValueError(f"label scheme {self.name!r}: swap {self.swap} is not a self-inverse permutation of {n}")
        if self.submission not in SUBMISSIONS or self.headline not in HEADLINE_METRICS:
            raise ValueError(f"label scheme {self.name!r}: submission {self.submission!r} / headline {self.headline!r}")
        if self.submission == "argmax" and not self.winner_column:
            raise ValueError(f"label scheme {self.name!r}: an arg-max submission needs a winner_column")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict:
        return {v: k for k, v in enumerate(self.labels)}

    @property
    def submission_columns(self) -> tuple:
        """The header of ``submission.csv``."""
        return ("id", *self.labels) if self.submission == "probabilities" else ("id", self.winner_column)

    def submission_row(self, row_id, probs) -> list:
        """One line of ``submission.csv`` for a row's class probabilities (a sequence of floats)."""
        probs = [float(p) for p in probs]
        if len(probs) != self.num_labels:
            raise ValueError(f"{self.name}: expected {self.num_labels} class probabilities, got {len(probs)}")
        if self.submission == "probabilities":
            return [row_id, *(repr(p) for p in probs)]
        return [row_id, self.labels[max(range(len(probs)), key=probs.__getitem__)]]  # ties: the lower class

    def describe(self) -> str:
        """``"lmsys (3 classes: winner_model_a, winner_model_b, winner_tie)"``."""
        return f"{self.name} ({self.num_labels} classes: {', '.join(self.labels)})"


# LMSYS Chatbot Arena (2024): JSON lists of turns, one-hot winner columns, probabilities scored by log loss.
LMSYS = LabelScheme(
    name="lmsys",
    competition="LMSYS Chatbot Arena",
    labels=("winner_model_a", "winner_model_b", "winner_tie"),
    swap=(1, 0, 2),  # exchanging response A and B maps class a<->b and leaves tie in place
    winner_column=None,
    plain_turns=False,
    submission="probabilities",
    headline="log_loss",
    test_path="/kaggle/input/lmsys-chatbot-arena/test.csv",
)
# WSDM Cup 2025 Multilingual Chatbot Arena: plain-string turns, a winner column, no tie; the winner's name
# is submitted and scored by accuracy.
WSDM = LabelScheme(
    name="wsdm",
    competition="WSDM Cup 2025 Multilingual Chatbot Arena",
    labels=("model_a", "model_b"),
    swap=(1, 0),
    winner_column="winner",
    plain_turns=True,
    submission="argmax",
    headline="accuracy",
    test_path="/kaggle/input/wsdm-cup-multilingual-chatbot-arena/test.parquet",
)
SCHEMES = {s.name: s for s in (LMSYS, WSDM)}
SCHEME_KEY = "kdq_scheme"  # a model's config.json: the name of the label scheme it was trained for

# The LMSYS scheme's classes and swap, under their older names.
LABELS = LMSYS.labels
SWAP_PERMUTATION = LMSYS.swap


def label_scheme(value) -> LabelScheme:
    """A :class:`LabelScheme`, or its name (``"lmsys"``, ``"wsdm"``) → the scheme."""
    if isinstance(value, LabelScheme):
        return value
    if value in SCHEMES:
        return SCHEMES[value]
    raise ValueError(f"unknown label scheme {value!r}; kdq knows {sorted(SCHEMES)}")


def scheme_with_labels(labels) -> LabelScheme:
    """The scheme whose class names are ``labels`` (in order)."""
    labels = tuple(labels)
    for s in SCHEMES.values():
        if s.labels == labels:
            return s
    raise ValueError(
        f"no label scheme has the classes {list(labels)}; kdq knows {[s.describe() for s in SCHEMES.values()]}"
    )


def swap_permutation(num_labels: int) -> tuple:
    """The A/B swap permutation of the scheme with ``num_labels`` classes (one per class count)."""
    found = [s.swap for s in SCHEMES.values() if s.num_labels == num_labels]
    if len(found) != 1:
        raise ValueError(
            f"no label scheme has {num_labels} classes; kdq knows {[s.describe() for s in SCHEMES.values()]}"
        )
    return found[0]


def scheme_of_config(config) -> LabelScheme:
    """The label scheme of a model: its ``config.json`` as a dict, or a transformers config object.

    The recorded name (:data:`SCHEME_KEY`) when there is one; else the scheme with as many classes
    as the config's ``id2label`` (a config object's ``num_labels``); else LMSYS (a base model's
    ``config.json`` names no classes).
    """
    if isinstance(config, dict):
        name, n = config.get(SCHEME_KEY), len(config.get("id2label") or {})
    else:
        name, n = getattr(config, SCHEME_KEY, None), getattr(config, "num_labels", 0)
    if name:
        return label_scheme(name)
    found = [s for s in SCHEMES.values() if s.num_labels == n]
    return found[0] if len(found) == 1 else LMSYS


# Swap test-time augmentation: "none" scores each row once; "full" also scores every row with
# A and B exchanged; "gated" scores every row once, then swap-scores only the least confident
# ``fraction`` of them (the WSDM Cup 2024 1st place did this).
TTA_MODES = ("none", "full", "gated")
DEFAULT_TTA_FRACTION = 0.33

# The exported folder.
RUNTIME_DIR = "kdq_runtime"  # this package, copied whole next to predict.py
SETTINGS_FILE = "kdq-predict.json"
MANIFEST_FILE = "kdq-manifest.json"
WHEELS_DIR = "wheels"
# Keys kdq adds to a model's config.json (stock transformers keeps and ignores them).
TEMPLATE_KEY = "kdq_template"  # the row template the model was trained with
SHRINK_KEY = "kdq_shrink"  # kdq.shrink's layer map: which teacher layer each student layer was copied from

# The records each stage writes into its output folder (every file name kdq writes lives in this section).
DISTILL_RECORD_FILE = "kdq-distill.json"  # kdq.distill: what was trained, from what, with what result
RUN_RECORD_FILE = "kdq-run.json"  # kdq.distill: the run's fingerprints, in the folder and every checkpoint
QUANTIZE_REPORT_FILE = "kdq-quantize.json"  # kdq.quantize: the method, its probe and reload check
EVAL_REPORT_FILE = "report.json"  # kdq.evaluate / kdq.compare / kdq.sweep_lengths report folders
EVAL_REPORT_MD_FILE = "report.md"  # the same folders: the report for people (tables, verdicts, notes)
EVAL_REPORT_PLOT_FILE = "report.png"  # the same folders: the report's plot
EVAL_ROWS_FILE = "rows.csv"  # kdq.compare report folders: one line per (variant, row), probabilities and cuts
PIPELINE_SUMMARY_FILE = "summary.json"  # kdq run
TRAIN_GROUPS_FILE = "kdq-train-groups.json"  # kdq.distill: hashed prompt / response-pair keys of the rows it trained on
TEACHER_FINGERPRINT_FILE = "fingerprint.json"  # kdq.distill's teacher cache: what its folder name hashes
GPU_CHECK_FILE = "gpu_check.json"  # bench/gpu_check.py's measurements (read from the kdq cache when there)
KAGGLE_METADATA_FILE = "dataset-metadata.json"  # kdq.export: what the Kaggle CLI reads to create the dataset
WEIGHT_INDEX_FILE = "model.safetensors.index.json"  # a sharded model's tensor -> shard map (kdq.export writes it)
# The notebook budget every stage projects against unless told otherwise (kdq/budgets/<name>.json).
DEFAULT_BUDGET_NAME = "lmsys-2xt4"

# Every JSON record kdq writes carries its format version under FORMAT_KEY (a record without one is
# format 1). The two an exported folder holds are read by this runtime, so their versions live here;
# the others sit beside their writers (kdq-distill.json, kdq-quantize.json, report.json).
FORMAT_KEY = "format"
MANIFEST_FORMAT = 1  # kdq-manifest.json
LEGACY_MANIFEST_FORMAT_KEY = "kdq_manifest_version"  # the manifest's key before FORMAT_KEY
SETTINGS_FORMAT = 1  # kdq-predict.json


def check_format(record: dict, supported: int, what: str, fix: str) -> int:
    """The format version of a JSON ``record`` kdq wrote (1 when it has none).

    A version this code does not know (newer than ``supported``, or not a positive int) raises
    ``ValueError`` naming ``what`` (the file) and ``fix`` (what to do about it).
    """
    version = record.get(FORMAT_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= supported:
        raise ValueError(f"{what} has format {version!r}; this code reads format {supported} and older: {fix}.")
    return version


def tta_mode(value) -> str:
    """``True``/``False`` (the older spelling) or a name in :data:`TTA_MODES` → the name."""
    if value is True:
        return "full"
    if value is False or value is None:
        return "none"
    if value in TTA_MODES:
        return value
    raise ValueError(f"tta must be one of {list(TTA_MODES)} (or True/False), got {value!r}")
