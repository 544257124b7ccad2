"""Export stage: self-contained Kaggle dataset folders, and their verification.

    kdq.export(model, out_dir, ExportConfig(title=..., dataset_id="owner/slug")) -> Path
    kdq.verify(folder) -> VerifyReport   # raises VerificationError on a missing/altered file

* ``build``: :func:`export`, in named steps (stage the files, the fp16 check, predict.py, wheels, the
  probe batch, the card and the manifest);
* ``config``: :class:`ExportConfig` and Kaggle's dataset rules (no torch at import);
* ``card``, ``manifest``, ``files``, ``fp16``, ``script``, ``wheels``: the model card, the manifest's
  records, the folder's files, fp16 weight storage, ``predict.py``, the offline wheels;
* ``verify``: :func:`verify`, the checksums and the probe re-run.

Names load on first use (:mod:`kdq.utils.lazy`): torch and transformers load only when a function runs.
"""

from ..utils.lazy import lazy_package

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

lazy_package(
    __name__,
    {
        "ExportConfig": ".config",
        "KAGGLE_LICENSES": ".config",
        "dataset_metadata_problems": ".config",
        "export": ".build",
        "ExportError": ".build",
        "verify": ".verify",
        "VerificationError": ".verify",
        "VerifyReport": ".verify",
    },
)
