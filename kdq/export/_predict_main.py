"""Facts about the exported ``predict.py`` that kdq records at export time.

The program itself is :mod:`kdq.runtime.predict`, copied whole into the folder; it reads
the backend packages below from ``kdq-predict.json`` (``backend_modules``).
"""
from __future__ import annotations

from ..quant_methods import runtime_modules_by_quant_method

# {config.json quant_method: modules}: transformers imports these itself when config.json names the
# method; predict.py checks them up front so a missing backend fails in seconds with the offline
# install line, not mid-load. Derived from kdq's quantization-method registry (kdq/quant_methods/).
BACKEND_MODULES = runtime_modules_by_quant_method()
