"""Optional backends are imported lazily, with an error that names the pip extra.

Quantization backends name their extra themselves (``QuantMethod.extra`` in
:mod:`kdq.quant_methods`); :data:`EXTRAS` covers the other optional packages.
"""

from __future__ import annotations

import importlib

EXTRAS = {
    "gguf": "real",
    "sklearn": "dev",
}


def require(module: str, *, purpose: str = "", extra: str | None = None):
    """Import ``module`` or raise ``ImportError`` that says which kdq extra installs it
    (``extra``, else the one :data:`EXTRAS` lists for it)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = extra or EXTRAS.get(module.split(".")[0])
        hint = f"pip install 'kdq[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        what = f" for {purpose}" if purpose else ""
        raise ImportError(
            f"{module} is needed{what} but could not be imported ({err}). Install it with: {hint}"
        ) from err
