"""Facts about the exported ``predict.py`` that kdq records at export time.

The program itself is :mod:`kdq.runtime.predict`, copied whole into the folder; it reads
the backend packages from ``kdq-predict.json`` (``backend_modules``), which kdq writes from
the quantization-method registry (:mod:`kdq.quant_methods`).
"""
from __future__ import annotations

from ..quant_methods import runtime_modules_by_quant_method


def backend_modules(quant_method) -> list:
    """The modules transformers imports itself when ``config.json`` names ``quant_method``; predict.py
    checks them up front, so a missing backend fails in seconds with the offline install line, not
    mid-load. Asked of the registry at export time, so a method registered later counts too."""
    return list(runtime_modules_by_quant_method().get(quant_method, ()))
