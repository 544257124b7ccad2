"""Distillation losses against closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdq.distill.losses import DIVERGENCES, distillation_loss, forward_kl, generalized_jsd, reverse_kl


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 3, generator=g) * 2, torch.randn(5, 3, generator=g) * 2


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_identical_logits_give_zero(name, logits):
    s, _ = logits
    out = DIVERGENCES[name](s, s.clone(), temperature=2.0, beta=0.3)
    assert out.shape == (5,) and out.dtype == torch.float32
    assert torch.allclose(out, torch.zeros(5), atol=1e-6)


def test_jsd_endpoints_match_kl_div(logits):
    s, t = logits
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    fwd = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)  # KL(teacher || student)
    rev = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)  # KL(student || teacher)
    assert torch.allclose(generalized_jsd(s, t, beta=0.0), fwd, atol=1e-6)
    assert torch.allclose(generalized_jsd(s, t, beta=1.0), rev, atol=1e-6)
    assert torch.allclose(forward_kl(s, t), fwd, atol=1e-6)
    assert torch.allclose(reverse_kl(s, t), rev, atol=1e-6)


def test_jsd_half_is_symmetric_and_bounded(logits):
    s, t = logits
    a, b = generalized_jsd(s, t, beta=0.5), generalized_jsd(t, s, beta=0.5)
    assert torch.allclose(a, b, atol=1e-6)
    assert (a <= math.log(2) + 1e-6).all() and (a > 0).all()


def test_one_value_by_hand():
    # teacher p = (0.5, 0.25, 0.25), student q = (0.25, 0.5, 0.25); logits are log-probs.
    p, q = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]
    t, s = torch.log(torch.tensor([p])), torch.log(torch.tensor([q]))
    kl_pq = 0.5 * math.log(2) + 0.25 * math.log(0.5)  # = 0.25 ln 2
    assert forward_kl(s, t).item() == pytest.approx(kl_pq, abs=1e-6)
    assert reverse_kl(s, t).item() == pytest.approx(0.25 * math.log(2), abs=1e-6)
    m = [(a + b) / 2 for a, b in zip(p, q)]  # (0.375, 0.375, 0.25)
    jsd = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m)) + 0.5 * sum(b * math.log(b / c) for b, c in zip(q, m))
    assert generalized_jsd(s, t, beta=0.5).item() == pytest.approx(jsd, abs=1e-6)


def test_temperature_scaling_is_t_squared(logits):
    s, t = logits
    T = 3.0
    expected = T**2 * forward_kl(s / T, t / T)
    assert torch.allclose(forward_kl(s, t, temperature=T), expected, atol=1e-5)


def test_fp16_inputs_are_computed_in_fp32(logits):
    s, t = logits
    out = forward_kl(s.half(), t.half())
    assert out.dtype == torch.float32
    assert torch.allclose(out, forward_kl(s.half().float(), t.half().float()), atol=1e-6)


def test_mixture_with_hard_labels(logits):
    s, t = logits
    y = torch.tensor([0, 1, 2, 0, 1])
    parts = distillation_loss(s, t, y, divergence="reverse_kl", alpha=0.3, temperature=2.0)
    ce = F.cross_entropy(s, y)
    kd = reverse_kl(s, t, temperature=2.0).mean()
    assert parts.loss.item() == pytest.approx(0.3 * ce.item() + 0.7 * kd.item(), rel=1e-6)
    hard = distillation_loss(s, None, y)
    assert hard.kd is None and hard.loss.item() == pytest.approx(ce.item())
    with pytest.raises(ValueError, match="registered"):
        distillation_loss(s, t, y, divergence="nope")


def test_forward_and_reverse_kl_differ_by_hand():
    # p = (0.8, 0.1, 0.1) teacher, q = (0.4, 0.4, 0.2) student: KL(p‖q) = 0.5 ln 2, KL(q‖p) = 0.6 ln 2.
    t, s = torch.log(torch.tensor([[0.8, 0.1, 0.1]])), torch.log(torch.tensor([[0.4, 0.4, 0.2]]))
    assert forward_kl(s, t).item() == pytest.approx(0.5 * math.log(2), abs=1e-6)
    assert reverse_kl(s, t).item() == pytest.approx(0.6 * math.log(2), abs=1e-6)
    # swapping the arguments swaps the two: each is the other's mirror, not itself symmetric
    assert forward_kl(t, s).item() == pytest.approx(0.6 * math.log(2), abs=1e-6)


def test_prob_cosine_by_hand():
    from kdq.distill.losses import prob_cosine

    t, s = torch.log(torch.tensor([[0.8, 0.1, 0.1]])), torch.log(torch.tensor([[0.4, 0.4, 0.2]]))
    cos = 0.38 / (0.6 * math.sqrt(0.66))
    assert prob_cosine(s, t).item() == pytest.approx(1 - cos, abs=1e-6)
    assert prob_cosine(s, t, temperature=1.0).item() == pytest.approx(prob_cosine(t, s).item(), abs=1e-7)  # symmetric


def test_cosine_weight_and_transfer_rows_by_hand():
    from kdq.distill.losses import IGNORE_LABEL, prob_cosine

    t = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6]]))
    s = torch.log(torch.tensor([[0.4, 0.4, 0.2], [0.5, 0.25, 0.25]]))
    y = torch.tensor([0, IGNORE_LABEL])  # the second row is a transfer row: no CE term
    parts = distillation_loss(s, t, y, alpha=0.25, temperature=1.0, cosine_weight=0.5)
    ce0 = -math.log(0.4)
    kd = forward_kl(s, t)
    cs = prob_cosine(s, t)
    rows = [0.25 * ce0 + 0.75 * kd[0] + 0.5 * cs[0], 0.75 * kd[1] + 0.5 * cs[1]]
    assert parts.loss.item() == pytest.approx(float(sum(rows) / 2), abs=1e-6)
    assert parts.ce.item() == pytest.approx(ce0, abs=1e-6)  # mean over labelled rows only
    assert parts.kd.item() == pytest.approx(kd.mean().item(), abs=1e-6)
    only_transfer = distillation_loss(s, t, torch.full((2,), IGNORE_LABEL), alpha=0.5)
    assert only_transfer.ce is None and only_transfer.loss.item() == pytest.approx(0.5 * kd.mean().item(), abs=1e-6)
    with pytest.raises(ValueError, match="need teacher logits"):
        distillation_loss(s, None, y)


def test_hidden_state_loss_masks_padding_and_matches_hand_values():
    from kdq.distill.losses import hidden_state_loss

    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # (B=1, L=3, H=2); the last token is padding
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-9.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # cosine: token 0 → 0, token 1 → 1 (orthogonal); mean over the 2 real tokens = 0.5
    assert hidden_state_loss([s], [t], mask).item() == pytest.approx(0.5, abs=1e-6)
    # mse: token 0 → 0, token 1 → ((0-1)² + (1-0)²)/2 = 1; mean = 0.5; two identical layers average the same
    assert hidden_state_loss([s, s], [t, t], mask, kind="mse").item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="hidden-state loss"):
        hidden_state_loss([s], [t], mask, kind="l1")


def test_centered_cosine_ignores_what_every_row_shares():
    """``centered-cosine``: a vector added to every row (the shared template feature) changes nothing, a
    positive rescaling of the centred rows is a perfect match, and plain cosine is fooled by the shared vector."""
    from kdq.distill.losses import feature_loss

    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 8, generator=g)
    shared = 50.0 * torch.randn(1, 8, generator=g)  # dominates every row, as the teacher's pooled feature does
    s = torch.randn(6, 8, generator=g)
    base = feature_loss(s, t, "centered-cosine")
    assert torch.allclose(feature_loss(s + 3.0 * shared, t + shared, "centered-cosine"), base, atol=1e-5)
    assert feature_loss(2.5 * (t - t.mean(0)) - shared, t, "centered-cosine") < 1e-5
    # closed form: 1 - cos of the centred rows, averaged
    sc, tc = s - s.mean(0), t - t.mean(0)
    expected = (1 - (sc * tc).sum(-1) / (sc.norm(dim=-1) * tc.norm(dim=-1))).mean()
    assert torch.allclose(base, expected, atol=1e-6)
    # plain cosine calls unrelated rows nearly equal once both share the large vector; centred cosine does not
    assert feature_loss(s + shared, t + shared, "cosine") < 0.05 < 0.5 < base
    assert feature_loss(s[:1], t[:1], "centered-cosine") == 0.0  # one row: nothing to tell apart
    with pytest.raises(ValueError, match="centered-cosine"):
        feature_loss(s, t, "centred")
