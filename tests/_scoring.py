"""Score held-out rows with a saved classifier folder: logits ``(N, 3)`` in row order."""

from kdq.data import encode
from kdq.models import load_classifier
from kdq.runtime.batching import predict_logits


def held_out_logits(model_dir, rows, template):
    m = load_classifier(model_dir)
    enc = encode(rows, m.tokenizer, template)
    return predict_logits(m.model, enc["input_ids"], m.tokenizer.pad_token_id, batch_size=32)
