"""Width pruning of a Llama-style classifier: embedding channels, MLP neurons and attention heads.

Minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
Distillation", §2.2; Sreenivas et al. 2024, Llama-3.1-Minitron 4B) ranks each width
dimension by the activations it produces on a few hundred calibration rows, keeps the most
important ones and then distils: width pruning beat depth pruning at equal size there.
Importance, per row averaged over its real tokens and aggregated over rows with an L2 norm
(the paper's best batch / sequence aggregation):

* **embedding channel** ``c``: ``|RMSNorm(x)_c|`` at every norm of the model (each layer's two
  and the final one), summed over the norms: the residual stream is shared, so one set of
  channels is kept for every layer;
* **MLP neuron** ``j`` of layer ``l``: ``|act(gate_j) · up_j|``, the input of ``down_proj``;
* **attention head** ``h`` of layer ``l``: the L2 norm of its output (the input of ``o_proj``).

Heads are pruned in whole GQA groups first (the groups with the least summed importance),
then within each kept group the least important query heads, so every kept query head keeps
its own key/value head and ``num_attention_heads / num_key_value_heads`` stays an integer.
``head_dim`` never changes (it is written to the config explicitly, so the hidden size need
not be a multiple of the head count). Every layer is pruned to the same sizes, so the result
is a standard config that stock transformers loads; the kept indices are recorded.

Pruning goes through the state dict: a new model is built from the narrowed config and the
sliced tensors are loaded into it strictly, so no module keeps a stale size.

Only families whose forward has been read for width-dependent constants are pruned
(:data:`WIDTH_FAMILIES`, keyed by ``config.model_type``); any other family is refused, naming it,
before the calibration pass. Slicing is exact only when nothing in the forward depends on the
hidden size but the tensors' shapes: ``head_dim`` is written to the config explicitly, and Gemma's
embedding multiplier ``sqrt(hidden_size)`` is folded into the kept embedding columns
(``sqrt(H) / sqrt(H')``), so the hidden state entering layer 0 is the source's on the kept channels.
Gemma's RMSNorm scales by ``1 + weight``; slicing ``weight`` slices ``1 + weight`` alike. What no
slicing keeps, for any family, is each RMSNorm's mean square, now over the kept channels only: the
deeper layers move, which is what the distillation after pruning is for.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .shrink_config import WIDTH_FIELDS  # the config's width fields, in one place

LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")


@dataclass(frozen=True)
class WidthFamily:
    """What width pruning must know of one model family's forward, read from its transformers modeling code.

    ``norms``: each layer's RMSNorms over the hidden channels (sliced like the residual stream); of these,
    ``meter_norms`` normalise the residual stream itself, and the channel importance is measured at their
    outputs (and the final norm's). ``head_norms``: per-head norms over ``head_dim`` (Qwen3's ``q_norm`` /
    ``k_norm``), kept whole. ``embed_scale``: the forward multiplies the embeddings by ``sqrt(hidden_size)``
    (Gemma), a constant that changes with the width; pruning folds ``sqrt(H) / sqrt(H')`` into the kept columns.
    """

    norms: tuple = LLAMA_NORMS
    meter_norms: tuple = LLAMA_NORMS
    head_norms: tuple = ()
    embed_scale: bool = False


#: The families width pruning is proven for (``tests/test_width_families.py``: every channel kept gives the
#: source's logits exactly; channels dropped give the source's layer-0 input on the kept channels). Llama covers
#: Danube3 and SmolLM2. Checked against transformers' modeling code: no embedding or residual multiplier (but
#: Gemma's, folded), no hidden-size-dependent attention scale (``head_dim`` is explicit), no fused projections.
WIDTH_FAMILIES = {
    "llama": WidthFamily(),
    "mistral": WidthFamily(),
    "qwen2": WidthFamily(),
    "qwen3": WidthFamily(head_norms=("self_attn.q_norm.weight", "self_attn.k_norm.weight")),
    "gemma": WidthFamily(embed_scale=True),
    "gemma2": WidthFamily(
        norms=(
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ),
        meter_norms=("input_layernorm", "pre_feedforward_layernorm"),
        embed_scale=True,
    ),
}


def width_family(config) -> WidthFamily:
    """The :class:`WidthFamily` of ``config.model_type``.

    Raises:
        ValueError: a family kdq has not checked, naming it and the supported ones.
    """
    kind = getattr(config, "model_type", None)
    if kind not in WIDTH_FAMILIES:
        raise ValueError(
            f"shrink: width pruning of model_type {kind!r} is refused: kdq has not read that family's forward for "
            "constants that depend on the width (embedding or residual multipliers, norms, a head_dim derived "
            "from hidden_size, fused projections), so the pruned student could compute something other than the "
            f"source's kept channels. Width pruning supports {sorted(WIDTH_FAMILIES)}; for {kind!r}, drop layers "
            "only (no hidden_size / intermediate_size / num_attention_heads / num_key_value_heads)."
        )
    return WIDTH_FAMILIES[kind]


@dataclass
class WidthImportance:
    """Minitron importance scores, float64.

    ``channels`` ``(H,)``, ``neurons`` ``(layers, I)``, ``heads`` ``(layers, n)``.
    """

    channels: torch.Tensor
    neurons: torch.Tensor
    heads: torch.Tensor


class WidthMeter:
    """Forward hooks that accumulate :class:`WidthImportance` while calibration rows run through a model.

    Use as a context manager around the forward passes; call :meth:`set_mask` with each batch's
    ``(B, L)`` attention mask before its forward pass (padded positions do not count).
    """

    def __init__(self, model):
        base = model.model
        self.layers = base.layers
        cfg = model.config
        self.n_heads, self.head_dim = cfg.num_attention_heads, _head_dim(cfg)
        n_layers, hidden, inter = len(self.layers), cfg.hidden_size, cfg.intermediate_size
        self._sq = {
            "channels": torch.zeros(hidden, dtype=torch.float64),
            "neurons": torch.zeros(n_layers, inter, dtype=torch.float64),
            "heads": torch.zeros(n_layers, self.n_heads, dtype=torch.float64),
        }
        family = width_family(cfg)
        self._norms = [getattr(layer, name) for layer in self.layers for name in family.meter_norms]
        self._norms.append(base.norm)
        self._mask = None
        self._handles = []

    def set_mask(self, mask: torch.Tensor) -> None:
        self._mask = mask.to(torch.float64)

    def _per_row(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, L, K)`` magnitudes → ``(B, K)`` means over each row's real tokens."""
        m = self._mask.to(values.device)
        return (values.double() * m[..., None]).sum(1) / m.sum(1).clamp(min=1.0)[:, None]

    def _add(self, key, index, per_row):
        sq = (per_row**2).sum(0).cpu()  # L2 over rows: sum of squares now, square root at the end
        if index is None:
            self._sq[key] += sq
        else:
            self._sq[key][index] += sq

    def __enter__(self):
        def norm_hook(module, args, output):
            self._add("channels", None, self._per_row(output.abs()))

        def mlp_hook(i):
            def fn(module, args):
                self._add("neurons", i, self._per_row(args[0].abs()))

            return fn

        def head_hook(i):
            def fn(module, args):
                x = args[0]
                heads = x.reshape(*x.shape[:-1], self.n_heads, self.head_dim).float().norm(dim=-1)
                self._add("heads", i, self._per_row(heads))

            return fn

        self._handles = [m.register_forward_hook(norm_hook) for m in self._norms]
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(i)))
            self._handles.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook(i)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False

    def result(self) -> WidthImportance:
        return WidthImportance(**{k: v.sqrt() for k, v in self._sq.items()})


def _head_dim(cfg) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def _nearest(value: int, valid: list) -> list:
    """The valid sizes nearest to ``value`` (the one just below and the one just above)."""
    below = [v for v in valid if v <= value]
    above = [v for v in valid if v >= value]
    return sorted({*(below[-1:]), *(above[:1])})


def check_width(config, **sizes) -> dict:
    """The narrowed sizes for ``config``, validated: ``{field: size}`` for every field in :data:`WIDTH_FIELDS`.

    Args:
        sizes: ``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
            ``num_key_value_heads``; ``None`` keeps the source's size. Without
            ``num_key_value_heads``, the source's KV heads are kept when the query heads
            divide among them, else the source's queries-per-group ratio is kept.
    Raises:
        ValueError: a model family width pruning is not proven for (:func:`width_family`), a size
        larger than the source, not positive, or one that breaks the GQA groups (KV heads must divide
        query heads, with at most the source's queries per group), naming the nearest valid sizes.
    """
    width_family(config)
    src = {
        "hidden_size": int(config.hidden_size),
        "intermediate_size": int(config.intermediate_size),
        "num_attention_heads": int(config.num_attention_heads),
        "num_key_value_heads": int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
    }
    unknown = sorted(set(sizes) - set(WIDTH_FIELDS))
    if unknown:
        raise ValueError(f"shrink: unknown width field(s) {unknown}; choose from {list(WIDTH_FIELDS)}")
    out = {k: (src[k] if sizes.get(k) is None else sizes[k]) for k in WIDTH_FIELDS}
    for k in WIDTH_FIELDS:
        v = out[k]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= src[k]:
            raise ValueError(
                f"shrink: {k}={v!r} must be an int in [1, {src[k]}] (the source model's {k} is {src[k]}; "
                "width pruning only narrows)."
            )
    n, k = src["num_attention_heads"], src["num_key_value_heads"]
    group = n // k  # query heads per KV head in the source
    heads = out["num_attention_heads"]
    if sizes.get("num_key_value_heads") is None and sizes.get("num_attention_heads") is not None:
        # keep every KV head when the queries divide among them, else keep the group size
        out["num_key_value_heads"] = k if heads % k == 0 and heads // k <= group else max(heads // group, 1)
    kv = out["num_key_value_heads"]
    if heads % kv or heads // kv > group:
        valid_heads = [kv * g for g in range(1, group + 1)]
        valid_kv = [d for d in range(1, k + 1) if heads % d == 0 and heads // d <= group]
        hint = f"num_attention_heads={_nearest(heads, valid_heads)} with num_key_value_heads={kv}"
        if valid_kv:
            hint += f", or num_key_value_heads={valid_kv} with num_attention_heads={heads}"
        raise ValueError(
            f"shrink: num_attention_heads={heads} cannot share num_key_value_heads={kv} in whole GQA groups of at "
            f"most {group} query heads each (the source has {n} query heads over {k} KV heads). Valid: {hint}."
        )
    if getattr(config, "head_dim", None) is None and out["hidden_size"] % heads:
        valid = [heads * m for m in range(1, src["hidden_size"] // heads + 1)]
        raise ValueError(
            f"shrink: this config derives head_dim from hidden_size / num_attention_heads, so hidden_size="
            f"{out['hidden_size']} must be a multiple of {heads}; nearest valid: {_nearest(out['hidden_size'], valid)}."
        )
    return out


def keep_top(scores: torch.Tensor, k: int) -> list:
    """Indices (ascending) of the ``k`` highest scores; ties go to the lower index, so the choice is deterministic."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def select_heads(scores: torch.Tensor, n_heads: int, n_kv: int, new_heads: int, new_kv: int) -> tuple:
    """``(kept query heads, kept KV heads)`` of one layer, ascending.

    Whole GQA groups first (by summed importance), then the query heads within each kept group.
    """
    group = n_heads // n_kv
    per_group = new_heads // new_kv
    group_scores = torch.stack([scores[g * group : (g + 1) * group].sum() for g in range(n_kv)])
    kv = keep_top(group_scores, new_kv)
    q = []
    for g in kv:
        within = keep_top(scores[g * group : (g + 1) * group], per_group)
        q += [g * group + j for j in within]
    return q, kv


@dataclass
class WidthPlan:
    """What width pruning keeps: global ``channels``; per layer ``neurons``, query ``heads`` and ``kv_heads``."""

    sizes: dict
    channels: list
    neurons: list
    heads: list
    kv_heads: list

    def record(self, source_sizes: dict) -> dict:
        """The ``kdq_shrink["width"]`` entry of the student's config.json."""
        return {
            "importance": "minitron-activation",
            "source": source_sizes,
            "sizes": dict(self.sizes),
            "kept_channels": self.channels,
            "kept_neurons": self.neurons,
            "kept_heads": self.heads,
            "kept_kv_heads": self.kv_heads,
        }


def plan_width(config, importance: WidthImportance, sizes: dict) -> WidthPlan:
    """Choose the kept indices from ``importance`` (rows of ``neurons``/``heads`` follow the model's layers)."""
    n, k = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    heads, kv = [], []
    for layer_scores in importance.heads:
        q_l, kv_l = select_heads(layer_scores, n, k, sizes["num_attention_heads"], sizes["num_key_value_heads"])
        heads.append(q_l)
        kv.append(kv_l)
    return WidthPlan(
        sizes=sizes,
        channels=keep_top(importance.channels, sizes["hidden_size"]),
        neurons=[keep_top(row, sizes["intermediate_size"]) for row in importance.neurons],
        heads=heads,
        kv_heads=kv,
    )


def _rows(idx: list, size: int) -> torch.Tensor:
    """Row indices of a projection whose output is ``idx`` blocks of ``size`` rows (heads of ``head_dim``)."""
    return torch.tensor([b * size + r for b in idx for r in range(size)], dtype=torch.long)


def prune_width(model, plan: WidthPlan):
    """A new model of the same class with ``plan``'s sizes and the kept slices of ``model``'s weights.

    ``model``: a ``*ForSequenceClassification`` of a family in :data:`WIDTH_FAMILIES` (Llama, Danube3,
    SmolLM2, Mistral, Qwen2, Qwen3, Gemma, Gemma2). Returns the new model (``model`` is not changed), in
    ``model``'s dtype. Raises ``ValueError`` for any other family (:func:`width_family`).
    """
    cfg = model.config
    family = width_family(cfg)
    d = _head_dim(cfg)
    new_cfg = copy_config(cfg, plan.sizes, head_dim=d)
    ch = torch.tensor(plan.channels, dtype=torch.long)
    dtype = next(model.parameters()).dtype
    out = {}
    for name, t in model.state_dict().items():
        out[name] = _slice(name, t, ch, plan, d, family)
        if family.embed_scale and name.endswith("embed_tokens.weight"):
            out[name] = _fold_embed_scale(out[name], int(cfg.hidden_size), int(new_cfg.hidden_size))
    new = type(model)._from_config(new_cfg, dtype=dtype)
    missing, unexpected = new.load_state_dict(out, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(
            f"width pruning of {type(model).__name__} left tensors unmatched (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); width pruning supports {sorted(WIDTH_FAMILIES)}."
        )
    return new.eval()


def _fold_embed_scale(embed: torch.Tensor, hidden: int, new_hidden: int) -> torch.Tensor:
    """Kept embedding columns times ``sqrt(hidden) / sqrt(new_hidden)``: the narrowed model multiplies its
    embeddings by ``sqrt(new_hidden)`` (rounded to the weights' dtype, as Gemma's forward rounds it), so its
    layer-0 input is the source's on the kept channels. Computed in fp32, rounded once to the weights' dtype."""
    if hidden == new_hidden:
        return embed
    scale = float(torch.tensor(hidden**0.5, dtype=embed.dtype)) / float(
        torch.tensor(new_hidden**0.5, dtype=embed.dtype)
    )
    return (embed.float() * scale).to(embed.dtype)


def copy_config(cfg, sizes: dict, *, head_dim: int):
    """A copy of ``cfg`` with the narrowed sizes and an explicit ``head_dim``."""
    new = copy.deepcopy(cfg)
    for k, v in sizes.items():
        setattr(new, k, v)
    new.head_dim = head_dim
    return new


def _slice(name: str, t: torch.Tensor, ch: torch.Tensor, plan: WidthPlan, d: int, family: WidthFamily) -> torch.Tensor:
    """The kept part of one state-dict tensor (the rules of the module doc)."""
    parts = name.split(".")
    if "layers" in parts:
        layer = int(parts[parts.index("layers") + 1])
        leaf = ".".join(parts[parts.index("layers") + 2 :])
        q_rows, kv_rows = _rows(plan.heads[layer], d), _rows(plan.kv_heads[layer], d)
        neurons = torch.tensor(plan.neurons[layer], dtype=torch.long)
        rules = {f"{norm}.weight": lambda x: x[ch] for norm in family.norms}
        rules |= {norm: lambda x: x for norm in family.head_norms}  # over head_dim, which never changes
        rules |= {
            "self_attn.q_proj.weight": lambda x: x[q_rows][:, ch],
            "self_attn.k_proj.weight": lambda x: x[kv_rows][:, ch],
            "self_attn.v_proj.weight": lambda x: x[kv_rows][:, ch],
            "self_attn.o_proj.weight": lambda x: x[ch][:, q_rows],
            "self_attn.q_proj.bias": lambda x: x[q_rows],
            "self_attn.k_proj.bias": lambda x: x[kv_rows],
            "self_attn.v_proj.bias": lambda x: x[kv_rows],
            "self_attn.o_proj.bias": lambda x: x[ch],
            "mlp.gate_proj.weight": lambda x: x[neurons][:, ch],
            "mlp.up_proj.weight": lambda x: x[neurons][:, ch],
            "mlp.down_proj.weight": lambda x: x[ch][:, neurons],
            "mlp.gate_proj.bias": lambda x: x[neurons],
            "mlp.up_proj.bias": lambda x: x[neurons],
            "mlp.down_proj.bias": lambda x: x[ch],
        }
        if leaf not in rules:
            raise ValueError(f"width pruning: no rule for tensor {name!r}; its family's forward was not checked.")
        return rules[leaf](t).clone()
    if name.endswith("embed_tokens.weight"):
        return t[:, ch].clone()
    if name.endswith("norm.weight"):  # the final norm
        return t[ch].clone()
    if name.endswith("score.weight"):
        return t[:, ch].clone()
    if name.endswith("rotary_emb.inv_freq") or name.endswith("score.bias"):
        return t.clone()
    raise ValueError(f"width pruning: no rule for tensor {name!r}; its family's forward was not checked.")
