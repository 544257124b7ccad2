"""Facts about the exported ``predict.py`` that kdq records at export time.

The program itself is :mod:`kdq.runtime.predict`, copied whole into the folder; it reads
the backend packages below from ``kdq-predict.json`` (``backend_modules``).
"""
from __future__ import annotations

# transformers imports these itself when config.json names the method; checked up front so a
# missing backend fails in seconds with the offline install line, not mid-load.
BACKEND_MODULES = {"gptq": ("gptqmodel", "optimum"), "bitsandbytes": ("bitsandbytes",)}
