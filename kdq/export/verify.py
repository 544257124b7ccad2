"""kdq.verify: prove that an exported folder is complete, unaltered and still predicts the same."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckFailed
from .files import MANIFEST_FILE, OPTIONAL_ROLES, sha256_file


class VerificationError(CheckFailed):
    """An exported folder is incomplete or altered, or no longer predicts what it did at export.

    ``problems`` lists ``(file, what is wrong)`` pairs; the message names them all.
    """

    def __init__(self, folder, problems):
        self.folder = str(folder)
        self.problems = list(problems)
        lines = "\n".join(f"  - {f}: {what}" for f, what in self.problems)
        super().__init__(f"{folder} failed verification ({len(self.problems)} problem(s)):\n{lines}\n"
                         "Re-export the model (kdq.export) or restore the files; do not upload this folder.")


@dataclass
class VerifyReport:
    """What :func:`verify` checked."""

    folder: str
    files_checked: int
    bytes_checked: int
    probe_rows: int = 0
    probe_max_abs_diff: float | None = None
    warnings: list = field(default_factory=list)


def prepare_backend(folder, device) -> None:
    """Before loading ``folder`` in this process: its quantization method's load-time preparation
    (GPTQ: kdq's gptqmodel CPU defaults, and an import that leaves HF_HOME... as it was)."""
    from ..quant_methods import prepare_to_load

    prepare_to_load(folder, device)


def check_checksums(folder) -> tuple:
    """Compare every file listed in the manifest; returns ``(problems, warnings, n_files, n_bytes)``."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        return [(MANIFEST_FILE, "missing: this is not a kdq export folder, or its manifest was deleted")], [], 0, 0
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return [(MANIFEST_FILE, f"unreadable ({type(err).__name__}: {err})")], [], 0, 0
    problems, notes, n_bytes = [], [], 0
    for rel, entry in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            if entry.get("role") in OPTIONAL_ROLES:
                notes.append(f"{rel}: missing (the Kaggle CLI does not upload it; fine on a downloaded copy)")
            else:
                problems.append((rel, f"missing (expected {entry['size']} bytes)"))
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            problems.append((rel, f"size mismatch: {size} bytes, manifest says {entry['size']}"))
            continue
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            problems.append((rel, f"sha256 mismatch: {digest[:16]}…, manifest says {entry['sha256'][:16]}…"))
            continue
        n_bytes += size
    listed = set(files) | {MANIFEST_FILE}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in listed:
            notes.append(f"{rel}: not listed in the manifest (it would be uploaded too)")
    return problems, notes, len(files), n_bytes


def verify(folder, *, probe: bool = True, atol: float | None = None, device: str = "cpu") -> VerifyReport:
    """Check an exported folder: every checksum, then a probe batch through its own predict.py.

    Args:
        folder: a folder written by :func:`kdq.export`.
        probe: load the model from the folder with stock transformers (through the folder's
            predict.py) and re-score the probe rows stored in the manifest.
        atol: largest allowed |Δ probability| against the stored probe; default: the
            manifest's ``probe.atol`` (ExportConfig.probe_atol).
        device: where to run the probe (the stored one was computed on CPU unless the
            exported model lived on a GPU).
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
    manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    stored = manifest.get("probe") or {}
    if not stored.get("rows"):
        raise VerificationError(folder, [(MANIFEST_FILE, "has no probe batch to re-score")])
    import torch

    from .script import SCRIPT_NAME, load_predict_module

    rows = [(r["prompt"], r["response_a"], r["response_b"]) for r in stored["rows"]]
    try:
        prepare_backend(folder, device)
        module = load_predict_module(folder / SCRIPT_NAME)
        got = module.predict_probs(folder, rows, tta=stored["tta"], batch_size=stored["batch_size"], devices=[device])
    except Exception as err:  # any load or scoring failure is a verification failure
        raise VerificationError(folder, [("probe", f"predict.py could not score the probe rows: "
                                                   f"{type(err).__name__}: {err}")]) from err
    diff = float((got - torch.tensor(stored["probs"], dtype=torch.float64)).abs().max())
    tol = stored.get("atol", 1e-4) if atol is None else atol
    if not diff <= tol:
        raise VerificationError(folder, [("probe", f"probabilities differ from those stored at export by up to "
                                                   f"{diff:.3g} (atol {tol:g}) on {len(rows)} rows on {device}")])
    report.probe_rows, report.probe_max_abs_diff = len(rows), diff
    return report
