"""Export stage: self-contained Kaggle dataset folders, and their verification.

    kdq.export(model, out_dir, ExportConfig(title=..., dataset_id="owner/slug")) -> Path
    kdq.verify(folder) -> VerifyReport   # raises VerificationError on a missing/altered file

Light on import: torch and transformers load only when a function runs.
"""

from .build import ExportError, export
from .config import KAGGLE_LICENSES, ExportConfig, dataset_metadata_problems
from .verify import VerificationError, VerifyReport, verify

__all__ = [
    "ExportConfig",
    "export",
    "verify",
    "VerificationError",
    "VerifyReport",
    "ExportError",
    "KAGGLE_LICENSES",
    "dataset_metadata_problems",
]
