"""Length-sorted, dynamically padded batch inference for sequence classifiers.

Imports only ``torch`` (and the standard library): ``kdq.export`` copies this file whole into
every exported folder, so training-time scoring and notebook inference share it.

Why length sorting: arena rows are long-tailed (most rows are short, a few fill
``max_length``). Padding a random batch to its longest row wastes most of the compute;
sorting by length first makes each batch nearly uniform, so padding efficiency (real
tokens / padded tokens) stays above 90% and throughput rises accordingly.
"""

from __future__ import annotations

import time

import torch

from .constants import swap_permutation


def length_sorted_batches(lengths, batch_size: int, max_batch_tokens: int | None = None):
    """Group row indices into batches of similar length, longest first.

    Longest first means an out-of-memory error shows up in the first batch, not after hours.
    ``max_batch_tokens`` (optional) caps ``rows x longest`` per batch so short rows can use
    bigger batches. Returns ``list[list[int]]`` of indices into ``lengths``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur = [], []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= batch_size or (max_batch_tokens and (len(cur) + 1) * longest > max_batch_tokens)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def pad_batch(sequences, pad_id: int):
    """Right-pad token lists. Returns ``(input_ids, attention_mask)``, both ``(B, L_max)`` int64."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for r, s in enumerate(sequences):
        ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


@torch.inference_mode()
def predict_logits(
    model,
    sequences,
    pad_id: int,
    batch_size: int = 8,
    device=None,
    max_batch_tokens: int | None = None,
    progress=None,
    stats: dict | None = None,
    return_pooled: bool = False,
):
    """Score token sequences with a sequence classifier, in the original order.

    Args:
        model: ``*ForSequenceClassification`` (any backend: fp16, GPTQ, bitsandbytes).
        sequences: list of ``N`` token-id lists.
        pad_id: the id used for padding; must equal ``model.config.pad_token_id`` so the
            model pools the last real token.
        progress: optional ``tqdm``-like object with ``update(n)`` and ``set_postfix``.
        stats: optional dict, filled with ``rows``, ``seconds``, ``real_tokens``,
            ``padded_tokens`` and ``padding_efficiency``.
        return_pooled: also return the pooled final hidden state of every row, the vector the
            classification head (``score``) reads at the last real token.
    Returns:
        ``torch.FloatTensor`` of shape ``(N, num_labels)``, fp32, on CPU; with ``return_pooled``
        the pair ``(logits, pooled)``, ``pooled`` of shape ``(N, hidden_size)`` fp32 on CPU.
    """
    if device is None:
        device = next(model.parameters()).device
    lengths = [len(s) for s in sequences]
    out = [None] * len(sequences)
    pooled = [None] * len(sequences) if return_pooled else None
    head_inputs = []
    hook = model.score.register_forward_hook(lambda m, a, o: head_inputs.append(a[0])) if return_pooled else None
    real = padded = done = 0
    start = time.perf_counter()
    try:
        for batch in length_sorted_batches(lengths, batch_size, max_batch_tokens):
            ids, mask = pad_batch([sequences[i] for i in batch], pad_id)
            # use_cache=False: a classifier never decodes, and the KV cache would cost ~0.75 GB
            # for a 4B model at batch 8 x 1024 tokens.
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            logits = logits.float().cpu()
            for row, i in enumerate(batch):
                out[i] = logits[row]
            if return_pooled:  # right padding: the last real token is at length - 1
                states = head_inputs.pop()
                last = (mask.sum(1) - 1).to(states.device)
                feats = states[torch.arange(len(batch), device=states.device), last].float().cpu()
                for row, i in enumerate(batch):
                    pooled[i] = feats[row]
            real += int(mask.sum())
            padded += mask.numel()
            done += len(batch)
            if progress is not None:
                progress.update(len(batch))
                elapsed = max(time.perf_counter() - start, 1e-9)
                progress.set_postfix(
                    rows_s=f"{done / elapsed:.1f}", pad_eff=f"{real / max(padded, 1):.0%}", refresh=False
                )
    finally:
        if hook is not None:
            hook.remove()
    seconds = time.perf_counter() - start
    if stats is not None:
        stats.update(
            rows=len(sequences),
            seconds=seconds,
            real_tokens=real,
            padded_tokens=padded,
            padding_efficiency=real / max(padded, 1),
        )
    if not sequences:
        empty = torch.zeros((0, model.config.num_labels))
        return (empty, torch.zeros((0, model.config.hidden_size))) if return_pooled else empty
    return (torch.stack(out), torch.stack(pooled)) if return_pooled else torch.stack(out)


def add_stats(total: dict, part: dict) -> dict:
    """Sum one :func:`predict_logits` ``stats`` dict into a running ``total`` (keys created as needed);
    ``padding_efficiency`` is recomputed from the sums. Returns ``total``."""
    for k in ("rows", "seconds", "real_tokens", "padded_tokens"):
        total[k] = total.get(k, 0) + part.get(k, 0)
    total["padding_efficiency"] = total["real_tokens"] / max(total["padded_tokens"], 1)
    return total


def combine_swap_tta(logits, swapped_logits):
    """Average a row's prediction with that of its A/B-swapped copy.

    ``swapped_logits[i]`` scores row ``i`` with A and B exchanged, so its classes are
    un-swapped with the label scheme's swap permutation (:func:`~.constants.swap_permutation` of
    the class count: LMSYS a<->b with tie in place, WSDM a<->b) before averaging the *probabilities*:
    ``p = (softmax(z) + softmax(z_swap)[:, perm]) / 2``.

    Args: both ``(N, C)``. Returns ``log p``, ``(N, C)`` fp32: log-probabilities, which
    can stand in for logits anywhere (softmax of ``log p`` is ``p``).
    """
    p = torch.softmax(logits.float(), -1)
    q = torch.softmax(swapped_logits.float(), -1)[:, list(swap_permutation(int(logits.shape[-1])))]
    return torch.log((p + q) / 2)
