"""Process environment for gptqmodel: safe CPU defaults, and no side effects from importing it.

gptqmodel (7.x) has three habits that hurt on a CPU-only machine:

* its ``TorchLinear`` kernel wraps dequantization in ``torch.compile``; the first forward
  pass then runs inductor (about 30 s for a 2-layer toy model, and a hard failure where no
  C++ compiler is installed). ``TORCH_COMPILE_DISABLE=1`` keeps it eager.
* packing the quantized weights tries to build a C++ extension first;
  ``GPTQMODEL_DISABLE_PACK_EXT=1`` uses the pure-torch packer.
* its CPU thread pool defaults to half the cores per worker; ``GPTQMODEL_CPU_WORKERS=2``
  keeps a 2-core CI runner from thrashing.

And importing it rewrites ``os.environ`` (``HF_HOME`` becomes ``/tmp/tokenicer_hf_home``,
plus ``PYTORCH_ALLOC_CONF`` and ``CUDA_DEVICE_ORDER``). :func:`prepare_gptq` imports it
once, under a snapshot of the environment, and puts back every variable the import touched.

Only the standard library is imported at module level: loading a GPTQ folder anywhere
(:mod:`kdq.models`, :func:`kdq.verify`) calls :func:`prepare_gptq` through the method registry.
"""

from __future__ import annotations

import logging
import os
import sys

from ..utils.imports import require

log = logging.getLogger("kdq.quantize")

# Values kdq uses when the user has not set the variable (os.environ.setdefault semantics). The
# GPTQ method's ``load_env["cpu"]``: the export records them for predict.py (kdq-predict.json).
GPTQ_CPU_DEFAULTS = {
    "TORCH_COMPILE_DISABLE": "1",
    "GPTQMODEL_DISABLE_PACK_EXT": "1",
    "GPTQMODEL_CPU_WORKERS": "2",
}


def apply_cpu_defaults() -> dict:
    """Set :data:`GPTQ_CPU_DEFAULTS` where the user has not; return the ones kdq set.

    ``TORCH_COMPILE_DISABLE`` is read by ``torch._dynamo`` when it is first imported (any
    model construction imports it). If that already happened, the variable alone would
    do nothing, so when the environment says ``TORCH_COMPILE_DISABLE=1`` (the user's value
    or kdq's default) the already-loaded dynamo config is brought in line with it.
    A user who set ``TORCH_COMPILE_DISABLE=0`` keeps compilation.
    """
    applied = {}
    for key, value in GPTQ_CPU_DEFAULTS.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    if os.environ.get("TORCH_COMPILE_DISABLE") == "1" and "torch._dynamo" in sys.modules:
        import torch._dynamo.config as dynamo_config

        dynamo_config.disable = True
    if applied:
        log.info("kdq set gptqmodel CPU defaults: %s", ", ".join(f"{k}={v}" for k, v in applied.items()))
    return applied


def import_gptqmodel_quietly():
    """Import gptqmodel (and optimum.gptq) and undo the environment changes the import makes.

    Returns the ``gptqmodel`` module. Raises ``ImportError`` naming the ``kdq[gptq]`` extra.
    Later imports are cached by Python, so this is the only import that can touch the
    environment.
    """
    if "gptqmodel" in sys.modules and "optimum.gptq" in sys.modules:
        return sys.modules["gptqmodel"]
    before = dict(os.environ)
    try:
        module = require("gptqmodel", purpose="GPTQ quantization", extra="gptq")
        require("optimum.gptq", purpose="GPTQ quantization through transformers' GPTQConfig", extra="gptq")
    finally:
        restored = []
        for key in set(os.environ) - set(before):
            del os.environ[key]
            restored.append(key)
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
                restored.append(key)
        if restored:
            log.debug("restored environment variables changed by importing gptqmodel: %s", sorted(restored))
    return module


def prepare_gptq(device) -> None:
    """Everything a process needs before it quantizes or loads a GPTQ model on ``device``.

    Args:
        device: ``torch.device`` or string; the CPU defaults apply only to ``"cpu"``.
    """
    if str(device).split(":")[0] == "cpu":
        apply_cpu_defaults()
    import_gptqmodel_quietly()
