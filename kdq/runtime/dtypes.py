"""The dtype rule, once: which floating-point type a model is held and computed in (torch only).

A T4 (the notebook's GPU, sm_75) has no bf16, so scoring, quantizing and everything exported runs
in fp16 on CUDA; training may take bf16 where the GPU has it natively (A100, H100). On CPU it is
fp32 everywhere: fp16/bf16 matmuls are slow or missing there. kdq asks this module (loading,
evaluation, quantization, the teacher pass, LoRA's frozen base, the Trainer's AMP precision), and so
does the exported ``predict.py``.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

# Every spelling kdq's configs use for a dtype (LoraSettings/DistillConfig say fp16, the others float16).
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
SHORT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compute_dtype(device, *, bf16: bool = False) -> torch.dtype:
    """fp32 on CPU; on CUDA fp16, or bf16 when ``bf16`` is asked for (training) and the GPU has it natively."""
    if torch.device(device).type != "cuda":
        return torch.float32
    if bf16 and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


def resolve_dtype(name, device, *, bf16: bool = False) -> torch.dtype:
    """A dtype setting: ``None`` or ``"auto"`` follow :func:`compute_dtype`; a name (``fp16``, ``bfloat16``...)
    is that dtype whatever the device."""
    if name is None or name == "auto":
        return compute_dtype(device, bf16=bf16)
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use auto or one of {sorted(DTYPES)}") from None


# --------------------------------------------------------------------------- layerwise casting
LAYERWISE_ATTR = "_kdq_layerwise_cast"  # the LayerwiseCast attached to a model (one per model)


def _plain_float(t) -> bool:
    """A plain floating tensor (quantized weights, integer buffers and tensor subclasses are left alone)."""
    return t is not None and t.dtype.is_floating_point and type(t) in (torch.Tensor, torch.nn.Parameter)


class LayerwiseCast:
    """Compute a model in ``dtype`` one module at a time while its weights stay stored as they are.

    A 4B classifier is 7.9 GB in bf16 and 15.8 GB in fp32: upcasting it whole for an fp32 forward on
    CPU needs twice the host memory. Instead each module's own floating weights are cast to ``dtype``
    (through ``via`` first, when given: ``via=torch.float16`` computes what an fp16 copy of the weights
    would) just before its forward and put back right after, so at most one module's cast copy exists at
    a time (the largest Linear, not the model). Embedding tables are not cast: their output is (a lookup
    is exact in any dtype). The stored tensors are restored as they were, bit for bit. The idea is
    diffusers' layerwise casting (``diffusers.hooks.layerwise_casting``), turned round: storage in the
    checkpoint's dtype, compute in a wider one.

    Inference only: gradients would reach the cast copies, not the stored parameters.
    Use :func:`compute_in` to attach one; :meth:`remove` detaches it.
    """

    def __init__(self, model, dtype: torch.dtype, via: torch.dtype | None = None):
        # a weak reference: the model holds this object (its hooks and attribute), and a strong one back would
        # be a cycle that keeps a dropped model's weights alive until the next garbage collection
        self._model = weakref.ref(model)
        self.dtype, self.via = dtype, via
        self._handles = []
        self._stored: dict = {}
        for module in model.modules():
            own = [n for n, p in module.named_parameters(recurse=False) if _plain_float(p)]
            if isinstance(module, torch.nn.Embedding):
                self._handles.append(module.register_forward_hook(self._cast_output))
            elif own:
                self._handles.append(module.register_forward_pre_hook(self._cast_in))
                self._handles.append(module.register_forward_hook(self._restore, always_call=True))
        setattr(model, LAYERWISE_ATTR, self)

    def set(self, dtype: torch.dtype, via: torch.dtype | None = None) -> None:
        """Compute in ``dtype`` (through ``via``) from now on."""
        self.dtype, self.via = dtype, via

    def _cast(self, t):
        if self.via is not None and t.dtype != self.via:
            t = t.to(self.via)
        return t.to(self.dtype)

    def _cast_in(self, module, args):
        stored = {}
        for name, p in module.named_parameters(recurse=False):
            if _plain_float(p) and (p.dtype != self.dtype or self.via is not None):
                stored[name] = p.data
                p.data = self._cast(p.data)
        self._stored[id(module)] = stored
        return tuple(a.to(self.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def _restore(self, module, args, output):
        stored = self._stored.pop(id(module), {})
        params = dict(module.named_parameters(recurse=False))
        for name, data in stored.items():
            params[name].data = data
        return output

    def _cast_output(self, module, args, output):
        return output.to(self.dtype) if torch.is_tensor(output) and output.is_floating_point() else output

    def remove(self) -> None:
        """Detach the hooks; the model computes in its stored dtype again."""
        for h in self._handles:
            h.remove()
        self._handles = []
        model = self._model()
        if model is not None and getattr(model, LAYERWISE_ATTR, None) is self:
            delattr(model, LAYERWISE_ATTR)


def stored_dtype(model) -> torch.dtype | None:
    """The dtype most of ``model``'s plain floating weights are stored in (``None``: none are)."""
    counts: dict = {}
    for p in model.parameters():
        if _plain_float(p):
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else None


def compute_in(model, dtype: torch.dtype, via: torch.dtype | None = None):
    """Make ``model`` compute in ``dtype`` without converting its stored weights (see :class:`LayerwiseCast`).

    A model already held in ``dtype`` (and no ``via``) is left as it is; a cast already attached is
    re-targeted. Returns ``model``.
    """
    current = getattr(model, LAYERWISE_ATTR, None)
    if current is not None:
        current.set(dtype, via)
    elif via is not None or stored_dtype(model) not in (None, dtype):
        LayerwiseCast(model, dtype, via)
    return model


def model_compute_dtype(model) -> torch.dtype | None:
    """What ``model`` computes in: its :class:`LayerwiseCast`'s dtype when it has one, else its stored dtype."""
    cast = getattr(model, LAYERWISE_ATTR, None)
    return cast.dtype if cast is not None else stored_dtype(model)


@contextlib.contextmanager
def restored_cast(model):
    """On exit, ``model`` computes as it did on entry: a :class:`LayerwiseCast` attached inside is removed,
    one that was there is set back to its dtype (for code that borrows a caller's model object)."""
    before = getattr(model, LAYERWISE_ATTR, None)
    state = (before.dtype, before.via) if before is not None else None
    try:
        yield model
    finally:
        now = getattr(model, LAYERWISE_ATTR, None)
        if before is None and now is not None:
            now.remove()
        elif before is not None:
            before.set(*state)


class HalfRounding:
    """fp16 arithmetic emulated with fp32 kernels: every module's floating inputs and outputs are rounded
    to fp16 (overflow to inf included) and back, while the matmuls themselves run in fp32.

    With the weights cast through fp16 (:func:`compute_in` with ``via=torch.float16``) this computes what an
    fp16 GEMM with fp32 accumulation computes, as a T4's tensor cores and the CPU's fp16 matmul do, rounding
    activations wherever a module hands them on: an activation over 65504 becomes inf at the next module
    boundary, as it does in fp16. It does not round inside a module (a residual add between two norms is
    rounded where the next module reads it), so it is fp16's range, checked at every module, at fp32 speed:
    on a CPU without fp16 units (AVX512-BF16 but no AVX512-FP16) 3-4x faster than fp16 compute, which
    matters for a 4B model's export check. Use it as a context manager on a model.
    """

    def __init__(self, model, dtype: torch.dtype = torch.float16):
        self.model, self.dtype = model, dtype
        self._handles = []

    def _round(self, x):
        if torch.is_tensor(x) and x.is_floating_point() and x.dtype != self.dtype:
            return x.to(self.dtype).to(x.dtype)
        if isinstance(x, tuple):
            return tuple(self._round(t) for t in x)
        if isinstance(x, list):
            return [self._round(t) for t in x]
        return x

    def __enter__(self):
        for module in self.model.modules():
            self._handles.append(module.register_forward_pre_hook(lambda m, args: self._round(args)))
            self._handles.append(module.register_forward_hook(lambda m, args, out: self._round(out)))
        return self.model

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False
