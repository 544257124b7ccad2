"""Teachers as one object: a model, a table of probabilities, or an ensemble of them.

:class:`Teacher` is what :func:`kdq.distill`, the teacher pass (``kdq cache-teacher``) and the live teacher
terms take (:func:`as_teacher` turns anything ``teacher=`` accepts into one):

* :class:`ModelTeacher`: a classifier folder, PEFT adapter folder, Hub id or model object. Its outputs are
  cached over the rows (:mod:`kdq.distill.cache`), and it alone can run live in every training step (the
  hidden-state term, live logits, live features). It is loaded once: the pass loads it only when a row
  still needs scoring, and a run that also needs it live keeps the copy the pass loaded on the training
  device (unless the live teacher is quantized: ``TeacherPassSettings.quantize``).
* :class:`TableTeacher`: a CSV, parquet, DataFrame or Arrow table of ``id`` plus one probability column
  per class of the rows' label scheme (``winner_model_a``, ``winner_model_b``, ``winner_tie`` for LMSYS;
  ``model_a``, ``model_b`` for WSDM), e.g. big teachers scored elsewhere over folds. It is fingerprinted
  by content and checked (every row has an id, unique; every row the student trains on has an id in it, ids
  written as floats, ``30192.0``, matched as integers; every row of it sums to 1 within 1e-3, the first bad id
  named; every blank or non-finite probability named by its row's id), then used exactly as cached teacher
  logits: log-probabilities, the swapped copies getting the scheme's permuted distribution.
  ``TeacherPassSettings.tta`` does not apply: the table's probabilities are used as they are.
* :class:`EnsembleTeacher`: several teachers, averaged in probability space with their weights
  (normalised to sum to 1), each member cached under its own fingerprint.

A live teacher runs in every training step (the hidden-state term, live logits, live
features) on exactly the token ids the student sees, so it must share the student's
tokenizer: :func:`tokenizer_differences` says what differs when it does not.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import math
import os
from pathlib import Path

from ..data.tables import TABLE_SUFFIXES
from ..runtime.template import TemplateConfig
from .config import TeacherPassSettings
from .needs import TeacherNeeds

log = logging.getLogger("kdq.distill")
SUM_TOLERANCE = 1e-3  # how far from 1 a table row's probabilities may sum
# A model teacher's head must be the rows' scheme's and in its weights (kdq.models.load_classifier's head rule)
TEACHER_HEAD = {"head": "require", "role": "the teacher"}

PROBE_TEXTS = (
    "[Turn 1]\nPrompt: Which is better?\nResponse A: The first answer.\nResponse B: The second answer.\n",
    "def f(x):\n    return x ** 2  # 3.14159 <b>bold</b> naïve café 東京 😀",
)


def tokenizer_differences(student_tok, teacher_tok) -> list:
    """What differs between two tokenizers that must map text to the same ids (empty when nothing does).

    Compares the vocabulary, the special tokens kdq relies on (BOS, pad) and the ids of a few
    probe texts (code, markup, non-English text and emoji), so normalisation differences show too.
    """
    out = []
    vs, vt = student_tok.get_vocab(), teacher_tok.get_vocab()
    if len(vs) != len(vt):
        out.append(f"vocabulary sizes {len(vs)} (student) vs {len(vt)} (teacher)")
    else:
        diff = next((tok for tok, i in sorted(vs.items(), key=lambda kv: kv[1]) if vt.get(tok) != i), None)
        if diff is not None:
            out.append(f"token {diff!r} is id {vs[diff]} for the student and {vt.get(diff)} for the teacher")
    for name in ("bos_token_id", "pad_token_id"):
        a, b = getattr(student_tok, name, None), getattr(teacher_tok, name, None)
        if a != b:
            out.append(f"{name} {a} (student) vs {b} (teacher)")
    for text in PROBE_TEXTS:
        a = student_tok(text, add_special_tokens=False)["input_ids"]
        b = teacher_tok(text, add_special_tokens=False)["input_ids"]
        if a != b:
            out.append(f"{text[:30]!r} encodes to {a[:8]}... (student) vs {b[:8]}... (teacher)")
            break
    return out


def check_same_tokenizer(student_tok, teacher_tok, why: str) -> None:
    """Raise ``ValueError`` naming what differs, when the teacher cannot read the student's token ids."""
    diffs = tokenizer_differences(student_tok, teacher_tok)
    if diffs:
        raise ValueError(
            f"{why} feeds the teacher the student's token ids, but their tokenizers differ: " + "; ".join(diffs) + ". "
            "Use a student that shares the teacher's tokenizer (e.g. one made by kdq.shrink, or the same model "
            "family), or distil logits only: set loss.hidden_weight=0, loss.feature_weight=0 and "
            "teacher_pass.logits='cache' (the cache pass renders rows with the teacher's own tokenizer)."
        )


def load_live_teacher(teacher, quantize: str, device):
    """The frozen teacher model for the live forward, in ``quantize`` (``TeacherPassSettings.quantize``) on
    ``device``.

    ``"none"``: fp16 on CUDA, fp32 on CPU; ``"int8"`` / ``"nf4"``: bitsandbytes, with the quantization
    registry's configs (the ``score`` head is never quantized), placed on ``device`` at load time.
    Returns a ``kdq.models.LoadedModel``.
    """
    from ..models import load_classifier, model_dtype_for

    dtype = model_dtype_for(device)
    if quantize == "none":
        return load_classifier(teacher, dtype=dtype, device=device, frozen=True, **TEACHER_HEAD)
    from ..quant_methods import get_quantizer, load_time_config

    method = {"int8": "bnb-int8", "nf4": "bnb-nf4"}[quantize]
    get_quantizer(method).prepare_load(device)
    qc = load_time_config(method, dtype)
    if not isinstance(teacher, (str, os.PathLike)):
        raise ValueError(
            f"DistillConfig.teacher_pass.quantize={quantize!r} loads the teacher quantized from a folder; got a "
            f"{type(teacher).__name__}. Save it with save_pretrained first, or set teacher_pass.quantize='none'."
        )
    return load_classifier(teacher, dtype=dtype, device=device, quantization_config=qc, **TEACHER_HEAD)


# --------------------------------------------------------------------------- teachers as objects
def pass_devices() -> list:
    """Where this process scores the teacher pass: its own device under a launcher (one per process), else
    every CUDA GPU (one thread each), else the CPU."""
    import torch

    from ..utils.distributed import training_device, world_size

    if world_size() > 1:
        return [training_device()]
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [torch.device("cuda", i) for i in range(n)] or [torch.device("cpu")]


class Teacher:
    """What a student learns from. Subclasses: :class:`ModelTeacher`, :class:`TableTeacher`,
    :class:`EnsembleTeacher`; :meth:`of` (:func:`as_teacher`) builds the right one from what ``teacher=``
    accepts. ``weight``: its share in an ensemble (relative; > 0)."""

    kind = "teacher"
    runs_live = False  # only a model can run in every training step

    def __init__(self, weight: float = 1.0):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 < weight < math.inf):
            raise ValueError(f"a teacher's weight must be a positive number, got {weight!r}")
        self.weight = float(weight)

    @staticmethod
    def of(source, weight: float | None = None) -> Teacher:
        """:func:`as_teacher`: a model folder / Hub id / model object, a table (CSV, parquet, DataFrame), a
        list of teachers or ``(teacher, weight)`` pairs (an ensemble), or a :class:`Teacher`."""
        return as_teacher(source, weight)

    def weighted(self, weight: float) -> Teacher:
        """A copy of this teacher with another ensemble ``weight``."""
        other = copy.copy(self)
        Teacher.__init__(other, weight)
        return other

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def check_scheme(self, scheme) -> None:
        """Raise ``ValueError`` when this teacher does not speak the rows' label scheme."""

    def check_terms(self, needs: TeacherNeeds) -> None:
        """Raise ``ValueError`` when the run (its :class:`~kdq.distill.needs.TeacherNeeds`) has a term this
        teacher cannot serve (only a model runs live or has hidden states)."""
        if needs.terms and not self.runs_live:
            raise ValueError(
                f"DistillConfig: {needs.terms[0]} needs the teacher model's own forward pass, which "
                f"{self.describe()} cannot give: it holds class probabilities only. Set loss.hidden_weight=0, "
                "loss.feature_weight=0 and teacher_pass.logits='cache', or pass one model teacher (a folder or a "
                "model)."
            )

    def targets(
        self,
        rows,
        settings: TeacherPassSettings,
        template: TemplateConfig,
        *,
        features: bool = False,
        devices=None,
        announce=None,
    ):
        """The teacher's outputs over canonical ``rows``, aligned: a :class:`~kdq.distill.cache.TeacherCache`.

        ``settings``: the run's teacher pass (a model reads its TTA, batch size and cache folder); ``template``:
        how a model renders the rows; ``devices``: where a model scores; ``announce(model_teacher, lengths)``:
        called on the main process before a model teacher scores, with the token lengths of the rows it will
        score."""
        raise NotImplementedError

    def release(self) -> None:
        """Free what this teacher holds in memory."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()}, weight={self.weight:g})"


class ModelTeacher(Teacher):
    """A classifier teacher: a folder, PEFT adapter folder, Hub id, model object or ``LoadedModel``.

    Weights load on first use, once per device (:meth:`models_on`); ``loads`` counts loads from disk or
    the Hub. With ``keep_loaded`` the copies stay after the pass, and :meth:`live` reuses the one on the
    training device (one load for the cache pass and the live forward).
    """

    kind = "model"
    runs_live = True

    def __init__(self, source, weight: float = 1.0, *, tokenizer=None):
        super().__init__(weight)
        from ..models import LoadedModel

        self.source = source
        self._adopted = source if isinstance(source, LoadedModel) else None
        self._tokenizer = tokenizer
        self._fingerprint = None
        self._models: dict = {}
        self.loads = 0
        self.keep_loaded = False

    @property
    def is_path(self) -> bool:
        return isinstance(self.source, (str, os.PathLike))

    def _adopt(self):
        if self._adopted is None:
            from ..models import load_classifier

            self._adopted = load_classifier(self.source, tokenizer=self._tokenizer, **TEACHER_HEAD)
        return self._adopted

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.is_path:
                from ..models import source_tokenizer

                self._tokenizer = source_tokenizer(self.source)
            else:
                self._tokenizer = self._adopt().tokenizer
        return self._tokenizer

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ..models import source_fingerprint

            self._fingerprint = source_fingerprint(self.source) if self.is_path else self._adopt().fingerprint
        return self._fingerprint

    @property
    def model_source(self):
        """What the training-memory plan and the scheme check read: the folder / Hub id, or the model object."""
        return self.source if self.is_path else self._adopt().model

    def describe(self) -> str:
        return f"the model teacher {self.source}" if self.is_path else "the model teacher (an in-memory model)"

    def check_scheme(self, scheme) -> None:
        from ..models import check_scheme

        check_scheme(self.model_source, scheme)

    def spec(self):
        """The teacher's shape (:class:`~kdq.costs.modelspec.ModelSpec`) from its config, or ``None``."""
        from .planning import student_spec

        return student_spec(self.model_source)

    def _load(self, device):
        import torch

        from ..models import load_classifier, model_dtype_for

        if self.is_path:
            self.loads += 1
            loaded = load_classifier(
                self.source,
                tokenizer=self.tokenizer,
                dtype=model_dtype_for(device),
                device=device,
                frozen=True,
                **TEACHER_HEAD,
            )
            return loaded.model
        base = self._adopt().model
        if not self._models:  # the object itself moves, as load_classifier(model, device=...) does
            return base.to(device)
        current = next(base.parameters()).device
        return copy.deepcopy(base).to(device) if current != torch.device(device) else base

    def models_on(self, devices=None) -> list:
        """``[(device, model)]``: a copy on each of ``devices`` (default: the CUDA GPU or the CPU, or where an
        in-memory model is), loaded on first use."""
        import torch

        if not devices:
            devices = [torch.device("cuda" if torch.cuda.is_available() else "cpu")] if self.is_path else None
            if devices is None:
                devices = [next(self._adopt().model.parameters()).device]
        out = []
        for d in devices:
            d = torch.device(d)
            if str(d) not in self._models:
                self._models[str(d)] = self._load(d)
            out.append((d, self._models[str(d)]))
        return out

    @property
    def model(self):
        """The model on this process's first device (loaded on first use)."""
        return self.models_on()[0][1]

    def targets(self, rows, settings, template, *, features: bool = False, devices=None, announce=None):
        from ..utils.cachedir import default_cache_dir
        from .cache import cache_teacher_logits

        try:
            cache = cache_teacher_logits(
                self,
                rows,
                cache_dir=settings.cache_dir or default_cache_dir(),
                template=template,
                tta=settings.tta,
                features=features,
                batch_size=settings.batch_size,
                devices=devices or pass_devices(),
                announce=(lambda lengths: announce(self, lengths)) if announce else None,
            )
        finally:  # free the teacher before the student trains (on a T4 both rarely fit), unless it runs live
            if not self.keep_loaded:
                self.release()
        if cache.reused:
            log.warning(
                "teacher cache: reused %d of %d rows from %s (same teacher, template and TTA); scored %d.",
                cache.reused,
                cache.reused + cache.computed,
                cache.path,
                cache.computed,
            )
        return cache

    def live(self, quantize: str, device):
        """The frozen teacher model for the live forward on ``device``, in ``quantize``
        (``TeacherPassSettings.quantize``): the copy the pass loaded there when it is the same computation (no
        quantization), else a new load. Other devices' copies are freed."""
        import torch

        from ..models import LoadedModel

        key = str(torch.device(device))
        model = self._models.get(key) if quantize == "none" else None
        if model is None:
            if self.is_path:
                self.loads += 1
            model = load_live_teacher(self.model_source, quantize, device).model
        self._models = {key: model}
        self.keep_loaded = False
        return LoadedModel(model=model, tokenizer=self.tokenizer, source=None, fingerprint=self.fingerprint)

    def release(self) -> None:
        self._models = {}
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


class TableTeacher(Teacher):
    """A teacher given as its probabilities: ``id`` plus one column per class (module doc)."""

    kind = "table"

    def __init__(self, source, weight: float = 1.0):
        super().__init__(weight)
        self.source = source
        self._table = None
        self._fingerprint = None
        self._checked = None

    @property
    def name(self) -> str:
        return str(self.source) if isinstance(self.source, (str, os.PathLike)) else f"a {type(self.source).__name__}"

    def describe(self) -> str:
        return f"the teacher table {self.name}"

    def table(self):
        """The table as Arrow: ``id`` as text, the other columns as read."""
        if self._table is None:
            self._table = _read_teacher_table(self.source, self.name)
        return self._table

    @property
    def fingerprint(self) -> str:
        """A hash of the content: the ids and every class-probability column, in order."""
        if self._fingerprint is None:
            import numpy as np

            table = self.table()
            h = hashlib.sha256()
            ids = table.column("id")
            for start in range(0, len(ids), 65536):
                h.update("\n".join(ids.slice(start, 65536).to_pylist()).encode() + b"\n")
            for name in sorted(c for c in table.column_names if c in _CLASS_COLUMNS):
                h.update(name.encode())
                h.update(np.ascontiguousarray(_floats(table, name, self.name)).tobytes())
            self._fingerprint = "table:" + h.hexdigest()[:16]
        return self._fingerprint

    def check_scheme(self, scheme) -> None:
        """The table has a column per class of ``scheme``; every row has an id, and ids are unique; every row is
        a distribution (:func:`_check_distributions`). Raises ``ValueError`` naming the rows and the fix."""
        from ..runtime.constants import label_scheme

        scheme = label_scheme(scheme)
        if self._checked == scheme.name:
            return
        table = self.table()
        missing = [c for c in scheme.labels if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{self.describe()} has no column {missing[0]!r}: a teacher table holds id plus one probability "
                f"column per class of the rows ({scheme.describe()}: {list(scheme.labels)}). Found columns "
                f"{table.column_names}."
            )
        _check_ids(table, self.describe())
        _check_distributions(table, self.probabilities(scheme), scheme, self.describe())
        self._checked = scheme.name

    def probabilities(self, scheme):
        """``(N_table, C)`` float64 in the scheme's class order."""
        import numpy as np

        table = self.table()
        return np.stack([_floats(table, c, self.name) for c in scheme.labels], axis=1)

    def targets(self, rows, settings, template, *, features: bool = False, devices=None, announce=None):
        import pyarrow as pa

        from ..data import scheme_of_rows
        from .cache import IdList, TeacherCache, column

        if features:
            raise ValueError(
                f"the pooled-feature term (loss.feature_weight > 0) needs the teacher's hidden states, which "
                f"{self.describe()} does not have; set loss.feature_weight=0 or pass a model teacher."
            )
        scheme = scheme_of_rows(rows)
        self.check_scheme(scheme)
        ids = column(rows, "id").combine_chunks()
        where = _join_ids(ids, self.table().column("id").combine_chunks(), self.describe())
        logits = log_probabilities(self.probabilities(scheme)[where])
        path = Path(self.source) if isinstance(self.source, (str, os.PathLike)) else None
        return TeacherCache(
            path=path,
            ids=IdList(ids),
            table=_logit_table(logits, pa),
            reused=len(ids),
            computed=0,
            stats={"teacher": "table", "source": self.name, "fingerprint": self.fingerprint},
        )

    def release(self) -> None:
        self._table = None


class EnsembleTeacher(Teacher):
    """Several teachers averaged in probability space: ``p = Σ w_i p_i / Σ w_i`` (each member's ``weight``)."""

    kind = "ensemble"

    def __init__(self, members, weight: float = 1.0):
        super().__init__(weight)
        self.members = [as_teacher(m) for m in members]
        if not self.members or any(m is None for m in self.members):
            raise ValueError("an ensemble needs at least one teacher, and None is not one")

    @property
    def weights(self) -> list:
        """The members' normalised weights (summing to 1)."""
        total = sum(m.weight for m in self.members)
        return [m.weight / total for m in self.members]

    @property
    def fingerprint(self) -> str:
        record = [[m.fingerprint, round(w, 12)] for m, w in zip(self.members, self.weights)]
        return "ensemble:" + hashlib.sha256(json.dumps(record).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"an ensemble of {len(self.members)} teachers"

    def check_scheme(self, scheme) -> None:
        for m in self.members:
            m.check_scheme(scheme)

    def targets(self, rows, settings, template, *, features: bool = False, devices=None, announce=None):
        import numpy as np
        import pyarrow as pa

        from .cache import TeacherCache

        if features:
            raise ValueError(
                f"the pooled-feature term (loss.feature_weight > 0) needs one teacher's hidden states; "
                f"{self.describe()} has none to give. Set loss.feature_weight=0 or pass one model teacher."
            )
        mixed, members, first = None, [], None
        for m, w in zip(self.members, self.weights):
            cache = m.targets(rows, settings, template, devices=devices, announce=announce)
            first = first or cache
            logits = cache.logits.astype(np.float64)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            mixed = w * p if mixed is None else mixed + w * p
            members.append(
                {
                    "teacher": m.describe(),
                    "weight": w,
                    "path": str(cache.path) if cache.path else None,
                    **cache.summary(),
                }
            )
            m.release()
        return TeacherCache(
            path=None,
            ids=first.ids,
            table=_logit_table(log_probabilities(mixed), pa),
            reused=sum(c["reused"] for c in members),
            computed=sum(c["computed"] for c in members),
            stats={"teacher": "ensemble", "members": members},
        )

    def release(self) -> None:
        for m in self.members:
            m.release()


def as_teacher(source, weight: float | None = None) -> Teacher | None:
    """A :class:`Teacher` from anything ``teacher=`` accepts (``None`` stays ``None``):

    * a :class:`Teacher`;
    * a folder, PEFT adapter folder or Hub id, a model object or ``LoadedModel``: :class:`ModelTeacher`;
    * a ``.csv`` / ``.parquet`` path, a pandas DataFrame, a ``pyarrow.Table`` or ``datasets.Dataset``:
      :class:`TableTeacher`;
    * a list (or tuple) of any of these, or of ``(teacher, weight)`` pairs: :class:`EnsembleTeacher`
      (one member: that member);
    * a ``(teacher, weight)`` pair: that teacher with that weight.
    """
    if source is None:
        return None
    if isinstance(source, tuple) and len(source) == 2 and _is_weight(source[1]):
        return as_teacher(source[0], source[1] if weight is None else weight)
    if isinstance(source, Teacher):
        return source if weight is None else source.weighted(weight)
    w = 1.0 if weight is None else weight
    if isinstance(source, (list, tuple)):
        members = [as_teacher(m) for m in source]
        if len(members) == 1:
            return members[0] if weight is None else members[0].weighted(w)
        return EnsembleTeacher(members, w)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix.lower() in TABLE_SUFFIXES and not path.is_dir():
            return TableTeacher(source, w)
        return ModelTeacher(source, w)
    if hasattr(source, "columns") and (hasattr(source, "to_dict") or hasattr(source, "column_names")):
        return TableTeacher(source, w)  # a DataFrame or a pyarrow Table
    if type(source).__name__ == "Dataset" and hasattr(source, "column_names"):
        return TableTeacher(source, w)  # a datasets.Dataset
    return ModelTeacher(source, w)  # a model object or LoadedModel (load_classifier names what else is wrong)


def _is_weight(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def log_probabilities(probs):
    """``log p`` as float32 logits; a zero probability becomes the smallest normal float32 first (log ≈ −87.3),
    so the divergences stay finite on hard (one-hot) teacher rows."""
    import numpy as np

    return np.log(np.maximum(probs, np.finfo(np.float32).tiny)).astype(np.float32)


def _logit_table(logits, pa):
    import datasets

    from .cache import _fixed

    return datasets.Dataset(pa.table({"logits": _fixed(logits)}))


_CLASS_COLUMNS = frozenset({"winner_model_a", "winner_model_b", "winner_tie", "model_a", "model_b"})


def _floats(table, name: str, where: str):
    """Column ``name`` as float64, a blank cell (empty CSV text, a null) as NaN (:func:`_check_distributions`
    names those); text that is no number is a ``ValueError`` naming its rows' ids."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(name).combine_chunks()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):  # a CSV column with a blank or text
        text = pc.utf8_trim_whitespace(col)
        col = pc.if_else(pc.equal(text, ""), pa.scalar(None, col.type), text)
    try:
        values = pc.cast(col, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        bad = [r for r, v in enumerate(col.to_pylist()) if v is not None and not _is_number(v)]
        if not bad:
            raise ValueError(
                f"teacher table {where}: column {name!r} is not numeric (type {col.type}); it must hold probabilities."
            ) from None
        raise ValueError(
            f"teacher table {where}: column {name!r} holds text that is no number: "
            f"{_named_rows(table, bad, [name])}; it must hold probabilities (fix or drop those rows)."
        ) from None
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def _is_number(text) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _cell(table, name: str, r: int) -> tuple:
    """``(text, ok)``: a cell as the table holds it (``blank`` for empty text or a null, else its value as
    ``repr`` shows it: ``nan``, ``inf``, ``'n/a'``, ``'0.25'``), and whether it is a finite number."""
    value = table.column(name)[r].as_py()
    if value is None or (isinstance(value, str) and not value.strip()):
        return "blank", False
    try:
        return repr(value), math.isfinite(float(value))
    except (TypeError, ValueError):
        return repr(value), False


def _named_rows(table, rows, columns, limit: int = 10) -> str:
    """``id '7' (winner_tie blank), id '9' (winner_model_a nan)``: the first ``limit`` of ``rows`` (indices),
    each with its cells in ``columns`` that are no finite number (all of them when every one is)."""
    ids = table.column("id")
    parts = []
    for r in rows[:limit]:
        cells = {c: _cell(table, c, r) for c in columns}
        shown = {c: text for c, (text, ok) in cells.items() if not ok} or {c: text for c, (text, _) in cells.items()}
        parts.append(f"id {ids[r].as_py()!r} ({', '.join(f'{c} {v}' for c, v in shown.items())})")
    more = len(rows) - limit
    return ", ".join(parts) + (f", and {more} more" if more > 0 else "")


def _check_ids(table, describe: str) -> None:
    """Every row has an id, and no id repeats; else ``ValueError`` naming the rows and the fix."""
    import numpy as np
    import pyarrow.compute as pc

    ids = table.column("id").combine_chunks()
    blank = np.flatnonzero(np.asarray(pc.equal(pc.utf8_trim_whitespace(ids), "").fill_null(True)))
    if len(blank):
        rows = ", ".join(str(int(r)) for r in blank[:10]) + (", ..." if len(blank) > 10 else "")
        raise ValueError(
            f"{describe}: {len(blank)} row(s) without an id (table row {rows}, counted from 0; in a CSV, a blank "
            "id cell). A row the student trains on is found by its id: drop the rows without one (pandas: "
            "df.dropna(subset=['id']), then df['id'] = df['id'].astype('Int64') if the ids became floats) and "
            "save the table again."
        )
    unique = pc.unique(ids)
    if len(unique) < len(ids):
        which = np.asarray(pc.index_in(ids, value_set=unique), dtype=np.int64)
        _, first = np.unique(which, return_index=True)
        r = int(np.flatnonzero(first[which] != np.arange(len(ids)))[0])
        raise ValueError(f"{describe}: id {ids[r].as_py()!r} appears twice; give each row one line.")


def _check_distributions(table, probs, scheme, describe: str) -> None:
    """Every row of ``probs`` (``(N, C)``, the table's class columns in ``scheme``'s order) is a distribution;
    else ``ValueError``: every row with a blank or non-finite probability named by its id (the first 10),
    or the first row that is negative or does not sum to 1 within :data:`SUM_TOLERANCE`."""
    import numpy as np

    ids = table.column("id")
    odd = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if len(odd):
        raise ValueError(
            f"{describe}: {len(odd)} row(s) have a blank or non-finite probability: "
            f"{_named_rows(table, [int(r) for r in odd], list(scheme.labels))}. Every row needs a probability in "
            "each class column: score those rows again, or drop them (a blank cell is often a row a merge left "
            "without a prediction)."
        )
    sums = probs.sum(axis=1)
    bad = (probs < 0).any(axis=1) | (np.abs(sums - 1.0) > SUM_TOLERANCE)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        values = dict(zip(scheme.labels, probs[r].tolist()))
        raise ValueError(
            f"{describe}: id {ids[r].as_py()!r} has probabilities {values} (sum {sums[r]:.6g}); every row "
            f"must be a distribution over the classes: values in [0, 1] that sum to 1 within {SUM_TOLERANCE:g}."
        )


_WHOLE_FLOAT = r"^([+-]?[0-9]+)\.0*$"  # "30192.0": an integer id written as a float (pandas, after NaN)
_FLOAT = r"^[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(\.[0-9]*)?[eE][+-]?[0-9]+)$"  # any float, as text


def _join_ids(ids, table_ids, describe: str):
    """Where each of the rows' ``ids`` is in the table's ids (``int64`` indices). Ids are matched as text;
    when some match none, whole-number floats (``"30192.0"``, as pandas writes an integer id column once a
    merge put NaN in it) are matched as the integers they are, on either side. Raises ``ValueError`` for a
    row the table lacks, saying so when the table's ids are floats, with the fix."""
    import numpy as np
    import pyarrow.compute as pc

    where = np.asarray(pc.index_in(ids, value_set=table_ids).fill_null(-1))
    if (where >= 0).all():
        return where
    as_ints = pc.replace_substring_regex(table_ids, _WHOLE_FLOAT, r"\1")
    if len(pc.unique(as_ints)) == len(as_ints):
        wanted = pc.replace_substring_regex(ids, _WHOLE_FLOAT, r"\1")
        where = np.asarray(pc.index_in(wanted, value_set=as_ints).fill_null(-1))
        if (where >= 0).all():
            log.info("%s: ids matched as integers (e.g. %r is %r).", describe, table_ids[0].as_py(), as_ints[0].as_py())
            return where
    missing = np.flatnonzero(where < 0)
    first, n = ids[int(missing[0])].as_py(), len(missing)
    if len(table_ids) and pc.all(pc.match_substring_regex(table_ids, _FLOAT)).as_py():
        raise ValueError(
            f"{describe}: its ids are floats (e.g. {table_ids[0].as_py()!r}), and {n} of the rows the student "
            f"trains on match none of them, even as integers (the first: id {first!r}). pandas writes an integer "
            "id column as floats once a merge put NaN in it: drop the rows without an id and write the ids as "
            "integers (df = df.dropna(subset=['id']); df['id'] = df['id'].astype('Int64')), then save the table "
            "again."
        )
    raise ValueError(
        f"{describe} has no row for id {first!r}, a row the student trains on (a training or transfer row; {n} "
        "such ids are missing). A teacher table must hold every training and transfer id: score those rows too, "
        "or drop them."
    )


def _read_teacher_table(source, name: str):
    """A teacher table as a ``pyarrow.Table`` with ``id`` as text (:func:`kdq.data.tables.read_table`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..data.tables import read_table

    table = read_table(
        source,
        what="teacher table",
        expects="a CSV or parquet of id plus one probability column per class, a pandas DataFrame, a "
        "pyarrow.Table or a datasets.Dataset",
        text_columns=("id",),
    ).with_format("arrow")[:]
    if "id" not in table.column_names:
        raise ValueError(
            f"teacher table {name} has no 'id' column: it needs id plus one probability column per class "
            f"(found {table.column_names})."
        )
    ids = table.column("id").combine_chunks()
    if pa.types.is_floating(ids.type):  # NaN is no id (blank, as in a CSV); 30192.0 is written "30192"
        ids = pc.if_else(pc.is_nan(ids), pa.scalar(None, ids.type), ids)
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        ids = pc.cast(ids, pa.string())
    return table.set_column(table.column_names.index("id"), "id", pc.fill_null(ids, ""))
