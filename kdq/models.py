"""Loading classifiers (full folders, PEFT adapters, in-memory models) and fingerprinting them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .quant_methods import prepare_to_load
from .runtime.constants import LMSYS, SCHEME_KEY, TEMPLATE_KEY, label_scheme, scheme_of_config
from .runtime.dtypes import compute_dtype, compute_in

# The LMSYS scheme's labels (the default); a model's own come from its scheme (prepare_classifier).
ID2LABEL = LMSYS.id2label
LABEL2ID = LMSYS.label2id


@dataclass
class LoadedModel:
    """A classifier with its tokenizer and where it came from."""

    model: object
    tokenizer: object
    source: str | None
    fingerprint: str


def is_adapter_dir(path) -> bool:
    return Path(path, "adapter_config.json").is_file()


def prepare_tokenizer(tokenizer):
    """Give the tokenizer a pad token (Llama tokenizers ship without one) and pad on the right."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ValueError("tokenizer has no pad, eos or unk token to pad with; set tokenizer.pad_token first.")
    tokenizer.padding_side = "right"
    return tokenizer


def prepare_classifier(model, tokenizer, scheme=None):
    """Make the model pool the last real token, name its classes and record its label scheme.

    ``scheme``: a :class:`~kdq.runtime.constants.LabelScheme` or its name; default: the one the
    model's config records or implies (:func:`~kdq.runtime.constants.scheme_of_config`). The
    scheme's name goes into ``config.json`` under ``kdq_scheme``. A model whose head has another
    number of outputs than the scheme has classes is an error.
    """
    scheme = label_scheme(scheme) if scheme is not None else scheme_of_config(model.config)
    outputs = getattr(getattr(model, "score", None), "out_features", None)
    if outputs is not None and outputs != scheme.num_labels:
        raise ValueError(
            f"the model's classification head has {outputs} outputs, but {scheme.describe()} needs "
            f"{scheme.num_labels}; load it from a folder (kdq re-initialises the head for training) or use "
            f"a model trained for {scheme.name!r} rows."
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.id2label = scheme.id2label
    model.config.label2id = scheme.label2id
    setattr(model.config, SCHEME_KEY, scheme.name)
    return model


def declared_labels(model_or_path) -> int | None:
    """How many classes a model's config declares (``id2label``; a config object's ``num_labels``), or
    ``None`` when a ``config.json`` names none (a base model's, or transformers' default two)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        cfg_file = Path(model_or_path, "config.json")
        if not cfg_file.is_file():
            return None
        return len(json.loads(cfg_file.read_text()).get("id2label") or {}) or None
    return getattr(getattr(model_or_path, "config", None), "num_labels", None)


def scheme_of(model_or_path):
    """The :class:`~kdq.runtime.constants.LabelScheme` of a model (object or folder; a Hub id is LMSYS)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        cfg_file = Path(model_or_path, "config.json")
        if not cfg_file.is_file():
            cfg_file = Path(model_source(model_or_path), "config.json")
        return scheme_of_config(json.loads(cfg_file.read_text())) if cfg_file.is_file() else LMSYS
    return scheme_of_config(getattr(model_or_path, "config", None) or {})


def check_scheme(model_or_path, scheme, role: str = "teacher") -> None:
    """Raise ``ValueError`` when a model (object or folder) was trained for another label scheme than ``scheme``."""
    scheme, own = label_scheme(scheme), scheme_of(model_or_path)
    declared = declared_labels(model_or_path)
    if declared is not None and declared != scheme.num_labels and own.num_labels != declared:
        raise head_error(f"the {role}", model_or_path, declared, scheme)  # a reward model: no scheme at all
    if own != scheme:
        raise ValueError(
            f"the {role} is a classifier for {own.describe()}, but the rows are {scheme.describe()}; "
            f"use a {role} trained on {scheme.name} rows, or rows of its own layout."
        )


def load_tokenizer(*candidates):
    from transformers import AutoTokenizer

    errors = []
    for c in candidates:
        if c is None:
            continue
        try:
            return prepare_tokenizer(AutoTokenizer.from_pretrained(str(c)))
        except (OSError, ValueError) as err:
            errors.append(f"{c}: {err}")
    raise ValueError(
        "could not load a tokenizer from "
        + "; ".join(errors or ["no source"])
        + ". Pass tokenizer=... explicitly or save one into the model folder."
    )


def load_classifier(
    src,
    *,
    tokenizer=None,
    scheme=None,
    dtype=None,
    device=None,
    base_model=None,
    merge_adapter: bool = True,
    quantization_config=None,
    head: str = "match",
    role: str = "the model",
    frozen: bool = False,
) -> LoadedModel:
    """Load a sequence classifier from a folder, a PEFT adapter folder, or take a model object.

    Args:
        src: folder path (a full model, or a PEFT/LoRA adapter with ``adapter_config.json``),
            or an in-memory ``PreTrainedModel`` / ``PeftModel``.
        tokenizer: tokenizer object or path; defaults to the one saved with ``src``
            (or with the adapter's base model).
        base_model: overrides ``base_model_name_or_path`` of an adapter folder.
        merge_adapter: merge a LoRA adapter into its base (faster inference, and required
            before quantization).
        quantization_config: load a full model folder quantized on the fly (e.g. a
            ``BitsAndBytesConfig``), placed on ``device`` at load time.
        scheme: the label scheme (:class:`~kdq.runtime.constants.LabelScheme` or its name) the
            classifier is for; default: the one its folder or object records (:func:`scheme_of`),
            else LMSYS.
        head: what a folder's (or Hub model's) classification head must be (:data:`HEAD_POLICIES`):
            ``"match"`` (default): a saved head with another number of outputs than ``scheme`` has
            classes (a reward model's one, say) is a ``ValueError`` naming ``num_labels``, the scheme and
            the fix (:func:`head_error`); ``"require"``: that, and a head missing from the weights (a base
            ``LlamaForCausalLM`` folder) is one too, naming the weight files: what is scored (evaluation,
            export, a teacher); ``"reinit"``: a head of another size, or none, is initialised anew for
            ``scheme``, with a warning: the student, whose training starts from it.
        role: what the model is for, in those errors (``"the teacher"``, ``"the model to export"``).
        frozen: the model only runs forward (scoring, probes, the teacher pass). A full folder stored
            in fp16/bf16 and asked for in fp32 on CPU then keeps its stored weights and computes in fp32
            one module at a time (:func:`kdq.runtime.dtypes.compute_in`): the same logits, bit for bit,
            in half the host memory (a 4B model: 7.9 GB, not 15.8 GB).
    """
    from transformers import PreTrainedModel

    if head not in HEAD_POLICIES:
        raise ValueError(f"head must be one of {list(HEAD_POLICIES)}, got {head!r}")
    compute = None  # a frozen half-precision folder computes in this dtype, layer by layer
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_dir():
            if is_hub_id(src):
                scheme = label_scheme(scheme or LMSYS)
                return _load_hub(str(src), tokenizer, scheme, dtype, device, head, role, quantization_config)
            raise ValueError(
                f"model folder {str(path)!r} does not exist; pass a saved model folder, a Hub id "
                "such as 'h2oai/h2o-danube3-500m-base', or a model object."
            )
        scheme = label_scheme(scheme) if scheme is not None else scheme_of(path)
        kwargs = {}
        if frozen and _keeps_stored_dtype(path, dtype, device, quantization_config):
            compute, dtype = dtype, "auto"
        if dtype is not None:
            kwargs["dtype"] = dtype
        if quantization_config is not None:
            if is_adapter_dir(path):
                raise ValueError(f"{path} is a PEFT adapter folder; merge it into a full folder to load it quantized.")
            kwargs.update(quantization_config=quantization_config, device_map={"": str(device or "cpu")})
            device = None  # placed at load time: quantized layers cannot always be moved afterwards
        if is_adapter_dir(path):
            from peft import PeftModel

            base = adapter_base(path, base_model)
            # a head the adapter saves replaces the base's (peft's modules_to_save): the base then needs none
            need = "match" if head != "match" and _adapter_saves_head(path) else head
            model = from_pretrained_classifier(base, scheme, head=need, role=role, **kwargs)
            tokenizer = tokenizer or load_tokenizer(path, base)
            prepare_classifier(model, tokenizer, scheme)
            model = PeftModel.from_pretrained(model, str(path))
            if merge_adapter:
                model = model.merge_and_unload()
        else:
            prepare_to_load(path, device)
            model = from_pretrained_classifier(str(path), scheme, head=head, role=role, **kwargs)
            tokenizer = tokenizer or load_tokenizer(path)
        fp = source_fingerprint(path, base_model)
        source = str(path.resolve())
    elif isinstance(src, torch.nn.Module):
        model = src
        if hasattr(model, "merge_and_unload") and merge_adapter:
            model = model.merge_and_unload()
        if tokenizer is None:
            name = getattr(getattr(model, "config", None), "_name_or_path", None)
            tokenizer = load_tokenizer(name if name and Path(name).is_dir() else None)
        fp = fingerprint_module(model)
        source = None
        if not isinstance(model, PreTrainedModel):
            raise ValueError(f"model object must be a transformers PreTrainedModel, got {type(model).__name__}.")
    else:
        raise ValueError(f"model must be a folder path or a transformers model, got {type(src).__name__}.")
    tokenizer = prepare_tokenizer(tokenizer)
    prepare_classifier(model, tokenizer, scheme)
    if device is not None:
        model.to(device)
    if compute is not None:
        compute_in(model, compute)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, fingerprint=fp)


def _keeps_stored_dtype(path: Path, dtype, device, quantization_config) -> bool:
    """Whether a frozen load of ``path`` keeps the stored weights and computes in ``dtype`` layer by layer:
    fp32 asked for on CPU, of an unquantized full folder (not an adapter) stored in fp16/bf16."""
    from .quant_methods import quantization_config_of

    if dtype != torch.float32 or torch.device(device or "cpu").type != "cpu" or quantization_config is not None:
        return False
    if is_adapter_dir(path) or quantization_config_of(path) is not None:
        return False
    config = json.loads(Path(path, "config.json").read_text())
    return (config.get("dtype") or config.get("torch_dtype")) in ("float16", "bfloat16")


HEAD_POLICIES = ("match", "require", "reinit")  # load_classifier(head=...): what a head that does not fit is


def head_error(role: str, source, num_labels: int, scheme) -> ValueError:
    """The error for a model whose classification head has ``num_labels`` outputs where ``scheme`` needs
    another number: which model, both numbers, the scheme, and the fix."""
    return ValueError(
        f"{role} {source} has a classification head of num_labels={num_labels}"
        f"{' (one output: a reward model)' if num_labels == 1 else ''}, but "
        f"{scheme.describe()} needs num_labels={scheme.num_labels}: it is no classifier for these rows. Fine-tune "
        f"it on arena rows first, as a student (kdq.distill('{source}', rows) re-initialises a head of another "
        "size), and use that student; or pass a classifier trained for these rows."
    )


def _missing_head_error(role: str, source, keys) -> ValueError:
    files = _weight_files(source)
    return ValueError(
        f"{role} {source}: its classification head ({', '.join(sorted(keys))}) is not in its weights "
        f"({', '.join(files) if files else 'no weight file'}), so transformers initialised it at random on load and "
        "its scores would mean nothing. The folder holds a base model (saved from LlamaForCausalLM, say) or lost "
        f"that key: fine-tune it on arena rows first (kdq.distill('{source}', rows)), or pass the classifier's own "
        "folder."
    )


def _weight_files(source) -> list:
    from .utils.weight_files import WEIGHT_SUFFIXES

    path = Path(str(source))
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def _is_head_key(key: str) -> bool:
    from .quant_methods import HEAD_MODULES

    return key.split(".")[0] in HEAD_MODULES


def from_pretrained_classifier(source, scheme, *, head: str = "match", role: str = "the model", **kwargs):
    """``AutoModelForSequenceClassification.from_pretrained(source, **kwargs)`` for ``scheme``'s classes, its
    classification head checked against the loading report (transformers' ``output_loading_info``) as
    ``head`` says (:func:`load_classifier`). Returns the model.

    Raises:
        ValueError: a head of another size (``head`` ``"match"`` / ``"require"``, :func:`head_error`), a head
            missing from the weights (``"require"``), or any other weight whose shape differs from the model's.
    """
    from transformers import AutoModelForSequenceClassification

    scheme = label_scheme(scheme)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(source),
        id2label=scheme.id2label,  # the classes (and so num_labels) come from the scheme, never the config
        label2id=scheme.label2id,
        ignore_mismatched_sizes=True,  # a head of another size is kdq's to judge (below), never a RuntimeError
        output_loading_info=True,
        **kwargs,
    )
    mismatched = {key: tuple(saved) for key, saved, _ in info.get("mismatched_keys") or ()}
    other = sorted(k for k in mismatched if not _is_head_key(k))
    if other:
        raise ValueError(
            f"{role} {source}: the weights {other} do not have the shapes its config.json describes; the folder's "
            "config and weights disagree. Save the model again (save_pretrained) from the object that trained it."
        )
    missing = sorted(k for k in info.get("missing_keys") or () if _is_head_key(k))
    if mismatched and head != "reinit":
        raise head_error(role, source, next(iter(mismatched.values()))[0], scheme)
    if missing and head == "require":
        raise _missing_head_error(role, source, missing)
    if (mismatched or missing) and head == "reinit":
        import warnings

        why = (
            f"the saved one has num_labels={next(iter(mismatched.values()))[0]}"
            if mismatched
            else f"{', '.join(missing)} is not in its weights"
        )
        warnings.warn(
            f"{source}: loading it for {scheme.name} rows re-initialises its classification head ({why}; "
            f"{scheme.describe()} needs num_labels={scheme.num_labels}): training starts from a new, random head.",
            stacklevel=3,
        )
    return model


def _adapter_saves_head(path) -> bool:
    """Whether a PEFT adapter folder saves a classification head of its own (``task_type="SEQ_CLS"`` does:
    ``modules_to_save``), which replaces its base's when it loads."""
    from .quant_methods import HEAD_MODULES

    weights = Path(path, "adapter_model.safetensors")
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            return any(len(k.split(".")) > 1 and k.split(".")[-2] in HEAD_MODULES for k in f.keys())
    saved = json.loads(Path(path, "adapter_config.json").read_text()).get("modules_to_save") or []
    return any(m in HEAD_MODULES for m in saved)


def adapter_base(path, base_model=None) -> str:
    """The base model a PEFT adapter folder applies to: ``base_model`` when given, else the folder's
    ``adapter_config.json`` ``base_model_name_or_path`` (a folder or a Hub id).

    Raises:
        ValueError: ``path`` is no adapter folder, or its ``adapter_config.json`` names no base.
    """
    if base_model:
        return str(base_model)
    if not is_adapter_dir(path):
        raise ValueError(f"{path} is not a PEFT adapter folder (no adapter_config.json).")
    base = json.loads(Path(path, "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{path}/adapter_config.json names no base_model_name_or_path; pass base_model=... (the folder or Hub "
            "id the adapter was trained on)."
        )
    return str(base)


def model_source(source) -> str:
    """Where a source's config and weights live: a folder or Hub id as given, an adapter folder's base
    (:func:`adapter_base`) for a PEFT adapter folder (whose own folder holds no ``config.json``)."""
    if is_adapter_dir(source) and not Path(source, "config.json").is_file():
        return adapter_base(source)
    return str(source)


def source_config(source):
    """The model config of ``source``: a model object's ``config``; a folder's ``config.json`` as a dict
    (an adapter folder's base's, :func:`model_source`); a Hub id's ``AutoConfig`` (read from the Hub cache, or
    the network).

    Raises:
        ValueError: a folder without ``config.json``, or anything else that is no model source.
        OSError: a Hub id transformers cannot reach.
    """
    if isinstance(source, torch.nn.Module):
        return source.config
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"no model config in a {type(source).__name__}; pass a folder, a Hub id or a model.")
    resolved = model_source(source)
    path = Path(resolved)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"no config.json in {resolved}; pass a saved model folder (save_pretrained).")
        return json.loads((path / "config.json").read_text())
    if is_hub_id(resolved):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(resolved)
    raise ValueError(f"{resolved!r} is neither a model folder nor a Hub id.")


def source_tokenizer(source):
    """The tokenizer saved with a folder or Hub id, else (a PEFT adapter folder without one) with its base,
    ready for kdq (:func:`prepare_tokenizer`: a pad token, padding on the right).

    Raises:
        ValueError: neither holds a tokenizer (:func:`load_tokenizer` names each place it tried).
    """
    base = adapter_base(source) if is_adapter_dir(source) else None
    return load_tokenizer(source, base)


def source_fingerprint(src, base_model=None) -> str:
    """Fingerprint of a folder, adapter folder (plus its base) or Hub id, without loading weights."""
    if is_hub_id(src):
        return f"hub:{src}"
    if is_adapter_dir(src):
        base = adapter_base(src, base_model)
        return fingerprint_path(src) + ":" + (fingerprint_path(base) if Path(base).is_dir() else base)
    return fingerprint_path(src)


class LazyClassifier:
    """A :class:`LoadedModel` look-alike whose weights load on the first use of ``.model``.

    The teacher pass needs only the tokenizer and the fingerprint to find what is cached
    already; a 4B teacher is loaded only when some row still has to be scored (a rerun, or
    every DDP rank but the first, loads nothing).
    """

    def __init__(self, src, *, base_model=None, **load_kwargs):
        self.source = str(src)
        self.fingerprint = source_fingerprint(src, base_model)
        base = adapter_base(src, base_model) if is_adapter_dir(src) else None
        self.tokenizer = prepare_tokenizer(load_kwargs.pop("tokenizer", None) or load_tokenizer(src, base))
        self._load = dict(load_kwargs, base_model=base_model)
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = load_classifier(self.source, tokenizer=self.tokenizer, **self._load).model
        return self._model


def is_hub_id(src) -> bool:
    """``"org/name"``: one slash, not a local path (which would exist or start with . / ~)."""
    text = str(src)
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists()


def _load_hub(
    repo_id, tokenizer, scheme, dtype, device, head="match", role="the model", quantization_config=None
) -> LoadedModel:
    """Load ``org/name`` from the Hugging Face Hub (GPU machines with network; never in tests); quantized on
    the fly and placed on ``device`` at load time when ``quantization_config`` is given."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map={"": str(device or "cpu")})
        device = None  # placed at load time
    try:
        model = from_pretrained_classifier(repo_id, scheme, head=head, role=role, **kwargs)
    except OSError as err:  # a mistyped local path looks like "org/name" too
        raise ValueError(
            f"{repo_id!r} is neither a local model folder nor a reachable Hub model ({err}). "
            "Check the path, or the network and the Hub id."
        ) from None
    tokenizer = prepare_tokenizer(tokenizer or load_tokenizer(repo_id))
    prepare_classifier(model, tokenizer, scheme)
    if device is not None:
        model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=repo_id, fingerprint=f"hub:{repo_id}")


def fingerprint_path(path) -> str:
    """Cheap identity of a model folder: its resolved path plus every file's size and mtime.

    Hashing the weights of a 4B model costs seconds per run; size+mtime changes whenever
    a file is rewritten, which is what a cache must notice.
    """
    path = Path(path).resolve()
    h = hashlib.sha256(str(path).encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return "path:" + h.hexdigest()[:16]


def fingerprint_module(model) -> str:
    """Identity of an in-memory model: a hash of every parameter and buffer (and their names)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "weights:" + h.hexdigest()[:16]


def model_dtype_for(device) -> torch.dtype:
    """The dtype a model is loaded in to score on ``device``: the runtime's rule
    (:func:`kdq.runtime.dtypes.compute_dtype`: fp16 on CUDA, a T4 has no bf16; fp32 on CPU)."""
    return compute_dtype(device)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def attach_template(model, template) -> None:
    """Record the row template in ``config.json`` so every later stage renders rows the same way.

    Stock transformers keeps unknown config keys, so the folder still loads without kdq.
    """
    setattr(model.config, TEMPLATE_KEY, template.to_dict())


def template_of(model_or_path):
    """The :class:`~kdq.runtime.template.TemplateConfig` recorded in a model (object or folder), or ``None``."""
    from .runtime.template import TemplateConfig

    if isinstance(model_or_path, (str, os.PathLike)):
        cfg_file = Path(model_or_path, "config.json")
        raw = json.loads(cfg_file.read_text()).get(TEMPLATE_KEY) if cfg_file.is_file() else None
    else:
        raw = getattr(getattr(model_or_path, "config", None), TEMPLATE_KEY, None)
    return TemplateConfig(**raw) if raw else None
