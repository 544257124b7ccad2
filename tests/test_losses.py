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
    expected = T ** 2 * forward_kl(s / T, t / T)
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
