"""Forget objectives, focal cross-entropy and distillation against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from unlearning.losses import bounded_ascent, distillation, focal_cross_entropy, forget_loss, random_labels, uniform_kl

ALLOWED = torch.arange(9)  # forget class 9


def test_random_labels_are_uniform_over_the_allowed_classes_only():
    labels = random_labels(torch.full((9000,), 9), ALLOWED, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels, minlength=10)
    assert counts[9] == 0
    assert ((counts[:9] - 1000).abs() < 150).all()


def test_bounded_ascent_pushes_until_the_bound_and_then_stops():
    logits = torch.zeros(2, 2, requires_grad=True)  # cross-entropy ln 2 for both samples
    y = torch.tensor([0, 1])
    loss = bounded_ascent(logits, y, bound=2.0)
    assert math.isclose(loss.item(), 2.0 - math.log(2), rel_tol=1e-6)
    loss.backward()
    assert logits.grad[0, 0] > 0  # descending this loss lowers the true class's logit
    assert bounded_ascent(logits, y, bound=0.5).item() == 0.0


def test_uniform_kl_is_zero_at_the_uniform_over_allowed_and_log_ten_ninths_at_the_full_uniform():
    suppressed = torch.zeros(1, 10)
    suppressed[0, 9] = -1e4
    assert abs(uniform_kl(suppressed, ALLOWED).item()) < 1e-6
    assert math.isclose(uniform_kl(torch.zeros(1, 10), ALLOWED).item(), math.log(10 / 9), rel_tol=1e-5)


def test_forget_loss_dispatches_each_objective_and_rejects_unknown_ones():
    logits, y = torch.randn(4, 10), torch.full((4,), 9)
    assert torch.equal(forget_loss("bounded_ascent", logits, y, ALLOWED, 3.0), bounded_ascent(logits, y, 3.0))
    assert torch.equal(forget_loss("uniform_kl", logits, y, ALLOWED), uniform_kl(logits, ALLOWED))
    relabelled = random_labels(y, ALLOWED, torch.Generator().manual_seed(1))
    expected = torch.nn.functional.cross_entropy(logits, relabelled)
    assert torch.equal(forget_loss("random_label", logits, y, ALLOWED, generator=torch.Generator().manual_seed(1)), expected)
    with pytest.raises(ValueError, match="unknown forget objective 'ascent'"):
        forget_loss("ascent", logits, y, ALLOWED)  # type: ignore[arg-type]


def test_distillation_is_zero_for_equal_logits_and_scaled_by_t_squared():
    teacher = torch.tensor([[2.0, 0.0]])
    assert distillation(teacher, teacher, temperature=3.0).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.zeros(1, 2)
    p = torch.softmax(teacher / 2.0, dim=1)
    kl = (p * (p.log() - math.log(0.5))).sum().item()
    assert distillation(student, teacher, temperature=2.0).item() == pytest.approx(4 * kl, rel=1e-5)


def test_focal_cross_entropy_weighs_each_sample_by_its_miss_probability_rescaled_to_the_batch():
    """Two samples, p_true 0.8 and 0.2: weights 0.2^γ and 0.8^γ, normalised to sum to one over the pair."""
    logits = torch.log(torch.tensor([[0.8, 0.2], [0.8, 0.2]])).requires_grad_()
    y = torch.tensor([0, 1])
    ce = torch.tensor([-math.log(0.8), -math.log(0.2)])
    for gamma in (0.5, 1.0, 2.0):
        w = torch.tensor([0.2, 0.8]) ** gamma
        assert math.isclose(focal_cross_entropy(logits, y, gamma).item(), ((w * ce).sum() / w.sum()).item(), rel_tol=1e-6)
    assert torch.equal(focal_cross_entropy(logits, y, 0.0), F.cross_entropy(logits, y))
    # the weights are constants: the gradient is that of the weighted cross-entropy with them held fixed
    focal_cross_entropy(logits, y, 1.0).backward()
    fixed = logits.detach().requires_grad_()
    (F.cross_entropy(fixed, y, reduction="none") @ torch.tensor([0.2, 0.8])).backward()
    assert torch.allclose(logits.grad, fixed.grad)


def test_focal_cross_entropy_keeps_the_scale_of_cross_entropy_where_every_sample_is_missed_alike():
    """Equal losses give equal weights, and the rescaling then leaves plain cross-entropy: the step size is unchanged."""
    logits, y = torch.zeros(4, 10), torch.tensor([0, 3, 5, 9])
    assert math.isclose(focal_cross_entropy(logits, y, 2.0).item(), math.log(10), rel_tol=1e-6)
    confident = torch.full((2, 3), -100.0).index_fill(1, torch.tensor([0]), 100.0)  # p_true 1: every weight 0
    assert focal_cross_entropy(confident, torch.tensor([0, 0]), 1.0).item() == 0.0


def test_label_smoothing_spreads_over_the_trained_classes_alone_and_matches_torch_over_all_of_them():
    logits, y = torch.randn(6, 10, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 3, 3, 5, 8, 1])
    every = torch.arange(10)
    assert torch.allclose(focal_cross_entropy(logits, y, 0.0, 0.1, every), F.cross_entropy(logits, y, label_smoothing=0.1))
    # over the nine units a forget-9 run trains, the forgotten unit's logit is only ever pushed down
    trained = torch.arange(9)
    logits.requires_grad_(True)
    focal_cross_entropy(logits, y, 0.0, 0.2, trained).backward()
    assert (logits.grad[:, 9] > 0).all()
    log_p = F.log_softmax(logits.detach(), dim=1)
    expected = (0.8 * -log_p[torch.arange(6), y] - 0.2 * log_p[:, :9].mean(dim=1)).mean()
    assert torch.isclose(focal_cross_entropy(logits.detach(), y, 0.0, 0.2, trained), expected)
