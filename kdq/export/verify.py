"""kdq.verify: prove that an exported folder is complete, unaltered and still predicts the same."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..quant_methods import method_for, prepare_to_load
from ..runtime.checksums import file_problems, read_manifest
from ..runtime.constants import MANIFEST_FILE
from ..utils.errors import CheckFailed
from .files import OPTIONAL_ROLES


class VerificationError(CheckFailed):
    """An exported folder is incomplete or altered, or no longer predicts what it did at export.

    ``problems`` lists ``(file, what is wrong)`` pairs; the message names them all.
    """

    def __init__(self, folder, problems):
        self.folder = str(folder)
        self.problems = list(problems)
        lines = "\n".join(f"  - {f}: {what}" for f, what in self.problems)
        super().__init__(
            f"{folder} failed verification ({len(self.problems)} problem(s)):\n{lines}\n"
            "Re-export the model (kdq.export) or restore the files; do not upload this folder."
        )


@dataclass
class VerifyReport:
    """What :func:`verify` checked."""

    folder: str
    files_checked: int
    bytes_checked: int
    probe_rows: int = 0
    probe_max_abs_diff: float | None = None
    warnings: list = field(default_factory=list)


def check_checksums(folder) -> tuple:
    """Compare every file listed in the manifest; returns ``(problems, warnings, n_files, n_bytes)``.

    The checks are the runtime's (:func:`kdq.runtime.checksums.file_problems`, which predict.py
    runs too); a missing optional file and unlisted extra files are warnings.
    """
    folder = Path(folder)
    try:
        files = read_manifest(folder)["files"]
    except FileNotFoundError:
        return [(MANIFEST_FILE, "missing: this is not a kdq export folder, or its manifest was deleted")], [], 0, 0
    except (ValueError, KeyError, TypeError) as err:
        return [(MANIFEST_FILE, f"unreadable ({type(err).__name__}: {err})")], [], 0, 0
    problems, missing, n_files, n_bytes = file_problems(folder, files, optional_roles=OPTIONAL_ROLES)
    notes = [f"{rel}: {what}" for rel, what in missing]
    listed = set(files) | {MANIFEST_FILE}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in listed:
            notes.append(f"{rel}: not listed in the manifest (it would be uploaded too)")
    return problems, notes, n_files, n_bytes


UNQUANTIZED_BATCH_SIZE_ATOL = 1e-4  # padding is masked out; only the summation order differs


def batch_size_atol(folder) -> float:
    """The |Δ probability| :func:`verify` allows when the probe is re-scored with another batch size
    than the export used (``probe.batch_size`` in the manifest): the folder's quantization method's
    ``QuantMethod.batch_size_atol`` (bitsandbytes int8 1e-2, 4-bit and GPTQ 1e-3), else 1e-4.

    Same batch size: kdq and predict.py build identical batches (one runtime), so the stored
    ``probe.atol`` applies. Another batch size regroups rows and padding.
    """
    method = method_for(folder)
    return method.batch_size_atol if method is not None else UNQUANTIZED_BATCH_SIZE_ATOL


def verify(
    folder, *, probe: bool = True, atol: float | None = None, device: str = "cpu", batch_size: int | None = None
) -> VerifyReport:
    """Check an exported folder: every checksum, then a probe batch through its own predict.py.

    Args:
        folder: a folder written by :func:`kdq.export`.
        probe: load the model from the folder with stock transformers (through the folder's
            predict.py) and re-score the probe rows stored in the manifest.
        atol: largest allowed |Δ probability| against the stored probe; default: the
            manifest's ``probe.atol`` (ExportConfig.probe_atol).
        device: where to run the probe (the stored one was computed on CPU unless the
            exported model lived on a GPU).
        batch_size: re-score the probe with this batch size (default: the one stored, which
            makes the batches identical); another one allows :func:`batch_size_atol` too.
    Returns:
        :class:`VerifyReport`. Unlisted extra files only warn.
    Raises:
        VerificationError: naming each missing, resized or altered file, or a probe mismatch.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VerificationError(folder, [(str(folder), "not a folder")])
    problems, notes, n_files, n_bytes = check_checksums(folder)
    if problems:
        raise VerificationError(folder, problems)
    for note in notes:
        warnings.warn(f"{folder}: {note}", stacklevel=2)
    report = VerifyReport(str(folder), n_files, n_bytes, warnings=notes)
    if not probe:
        return report
    stored = read_manifest(folder).get("probe") or {}
    if not stored.get("rows"):
        raise VerificationError(folder, [(MANIFEST_FILE, "has no probe batch to re-score")])
    import torch

    from .script import SCRIPT_NAME, load_predict_module

    rows = [(r["prompt"], r["response_a"], r["response_b"]) for r in stored["rows"]]
    try:
        prepare_to_load(folder, device)  # the method's load-time preparation (GPTQ: gptqmodel CPU defaults)
        module = load_predict_module(folder / SCRIPT_NAME)
        got = module.predict_probs(
            folder,
            rows,
            tta=stored["tta"],
            batch_size=batch_size or stored["batch_size"],
            devices=[device],
            tta_fraction=stored.get("tta_fraction"),
        )
    except Exception as err:  # any load or scoring failure is a verification failure
        raise VerificationError(
            folder, [("probe", f"predict.py could not score the probe rows: {type(err).__name__}: {err}")]
        ) from err
    diff = float((got - torch.tensor(stored["probs"], dtype=torch.float64)).abs().max())
    tol = stored.get("atol", 1e-4) if atol is None else atol
    if atol is None and batch_size is not None and batch_size != stored["batch_size"]:
        tol = max(tol, batch_size_atol(folder))
    if not diff <= tol:
        raise VerificationError(
            folder,
            [
                (
                    "probe",
                    f"probabilities differ from those stored at export by up to "
                    f"{diff:.3g} (atol {tol:g}) on {len(rows)} rows on {device}",
                )
            ],
        )
    report.probe_rows, report.probe_max_abs_diff = len(rows), diff
    return report
