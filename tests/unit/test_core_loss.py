"""The ACT loss: weights, unbiasedness under each transform, NaN masking, power tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional

from act.core.loss import act_cross_entropy, act_loss, act_weights, power_tuning_lambda
from act.core.sampling import draw
from act.core.transforms import METHODS, review_probabilities


def test_weights_follow_the_formula() -> None:
    delta = np.array([1, 0, 1, 0])
    pi = np.array([0.5, 0.5, 0.25, 0.0])
    w_machine, w_human = act_weights(delta, pi, lam=0.5)
    assert w_human.tolist() == [2.0, 0.0, 4.0, 0.0]
    assert w_machine.tolist() == [0.5 * (1 - 2.0), 0.5, 0.5 * (1 - 4.0), 0.5]


def test_clipped_weights_with_lam_one_give_cross_entropy_on_act_data() -> None:
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    y_machine = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(1))
    y_human = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(2))
    delta = np.arange(50) % 3 == 0
    pi = np.where(delta, 0.2, 0.1)
    clipped = act_cross_entropy(logits, y_machine, y_human, delta, pi, max_weight=1.0)
    act_labels = torch.where(torch.as_tensor(delta), y_human, y_machine)
    assert torch.allclose(clipped, functional.cross_entropy(logits, act_labels))


def test_nan_human_losses_of_unreviewed_items_do_not_leak() -> None:
    theta = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    loss_machine = theta**2
    has_human_label = torch.tensor([True, False, False])
    # The usual shape of "no human label": the per-item loss is filled with NaN there.
    loss_human = torch.where(has_human_label, (theta - 1.0) ** 2, torch.nan)
    delta = [1, 0, 0]
    pi = [0.5, 0.2, 0.2]
    value = act_loss(loss_machine, loss_human, delta, pi)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(theta.grad).all()
    expected = (
        (theta[0] ** 2 + ((theta[0] - 1) ** 2 - theta[0] ** 2) / 0.5)
        + theta[1] ** 2
        + theta[2] ** 2
    ) / 3
    assert value.item() == pytest.approx(expected.item())


def test_act_cross_entropy_ignores_missing_human_labels_and_has_gradients() -> None:
    logits = torch.randn(6, 3, requires_grad=True)
    y_machine = torch.tensor([0, 1, 2, 0, 1, 2])
    y_human = torch.tensor([1, -1, -1, 0, -1, -1])  # -1: not reviewed
    delta = [1, 0, 0, 1, 0, 0]
    value = act_cross_entropy(logits, y_machine, y_human, delta, [0.5] * 6)
    value.backward()
    assert torch.isfinite(value)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("method", METHODS)
def test_act_loss_is_unbiased_for_the_human_loss(method: str) -> None:
    """Monte Carlo over independent draws of delta ~ Ber(pi): mean ACT loss ≈ the human loss."""
    rng = np.random.default_rng(7)
    n_items = 200
    eps = rng.beta(0.6, 2.5, size=n_items)
    loss_human = torch.as_tensor(rng.gamma(2.0, 0.5, size=n_items))
    wrong = rng.random(n_items) < eps  # the machine label is wrong more often where eps is high
    loss_machine = torch.where(
        torch.as_tensor(wrong), torch.as_tensor(rng.gamma(4.0, 0.8, size=n_items)), loss_human
    )
    # norm-paper has no floor: keep every eps > 0 so that every pi is positive.
    pi = review_probabilities(np.maximum(eps, 1e-3), 30.0, method)
    assert (pi > 0).all()
    ids = [f"item-{i}" for i in range(n_items)]
    draws = np.array(
        [
            act_loss(loss_machine, loss_human, draw(pi, ids, seed, "bernoulli"), pi).item()
            for seed in range(1500)
        ]
    )
    target = loss_human.mean().item()
    standard_error = draws.std(ddof=1) / np.sqrt(draws.size)
    assert abs(draws.mean() - target) < 4 * standard_error, (method, draws.mean(), target)


def test_act_loss_is_unbiased_under_systematic_sampling() -> None:
    rng = np.random.default_rng(11)
    n_items = 150
    eps = rng.beta(0.6, 2.5, size=n_items)
    loss_human = torch.as_tensor(rng.gamma(2.0, 0.5, size=n_items))
    loss_machine = loss_human + torch.as_tensor(rng.normal(0, 1.0, size=n_items))
    pi = review_probabilities(eps, 20.0, "exp")
    ids = [f"item-{i}" for i in range(n_items)]
    draws = []
    for seed in range(1500):
        delta = draw(pi, ids, seed, "systematic")
        assert delta.sum() == 20
        draws.append(act_loss(loss_machine, loss_human, delta, pi).item())
    values = np.array(draws)
    standard_error = values.std(ddof=1) / np.sqrt(values.size)
    assert abs(values.mean() - loss_human.mean().item()) < 4 * standard_error


def test_power_tuning_recovers_the_variance_minimising_lambda() -> None:
    rng = np.random.default_rng(3)
    n_items = 20_000
    machine = rng.normal(1.0, 1.0, size=n_items)
    human = 0.6 * machine + rng.normal(0, 0.3, size=n_items)
    pi = np.full(n_items, 0.3)
    delta = rng.random(n_items) < pi
    estimate = power_tuning_lambda(machine, human, delta, pi)
    oracle = float(np.sum(human * machine) / np.sum(machine * machine))
    assert estimate == pytest.approx(oracle, abs=0.05)


def test_power_tuning_on_gradients_and_clipping() -> None:
    rng = np.random.default_rng(4)
    machine = rng.normal(size=(500, 3))
    pi = np.full(500, 0.5)
    delta = rng.random(500) < pi
    assert power_tuning_lambda(machine, machine, delta, pi) == pytest.approx(1.0, abs=0.15)
    assert power_tuning_lambda(machine, -machine, delta, pi) == 0.0
    assert power_tuning_lambda(machine, machine, delta, np.ones(500)) == 1.0


@pytest.mark.parametrize(
    ("delta", "pi", "lam", "max_weight", "message"),
    [
        ([1, 0], [0.0, 0.5], 1.0, None, "pi = 0"),
        ([1, 0], [0.5], 1.0, None, "entries"),
        ([1, 2], [0.5, 0.5], 1.0, None, "0/1"),
        ([1, 0], [0.5, 1.5], 1.0, None, r"\[0, 1\]"),
        ([1, 0], [0.5, np.nan], 1.0, None, "finite"),
        ([1, 0], [0.5, 0.5], 1.5, None, "lam"),
        ([1, 0], [0.5, 0.5], 1.0, 0.5, "max_weight"),
    ],
)
def test_bad_weights_input_is_rejected(
    delta: list[int], pi: list[float], lam: float, max_weight: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        act_weights(delta, pi, lam, max_weight=max_weight)


def test_bad_loss_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="same shape"):
        act_loss(torch.zeros(3), torch.zeros(4), [0, 0, 0], [0.5] * 3)
    with pytest.raises(ValueError, match="entries"):
        act_loss(torch.zeros(3), torch.zeros(3), [0, 0], [0.5] * 2)
    with pytest.raises(ValueError, match="logits"):
        act_cross_entropy(
            torch.zeros(3),
            torch.zeros(3, dtype=torch.long),
            torch.zeros(3, dtype=torch.long),
            [0] * 3,
            [0.5] * 3,
        )


def test_power_tuning_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="pi > 0"):
        power_tuning_lambda([1.0, 2.0], [1.0, 2.0], [1, 0], [0.5, 0.0])
    with pytest.raises(ValueError, match="reviewed"):
        power_tuning_lambda([1.0, 2.0], [1.0, 2.0], [0, 0], [0.5, 0.5])
    with pytest.raises(ValueError, match="same items"):
        power_tuning_lambda([1.0, 2.0], [1.0], [1, 0], [0.5, 0.5])


@pytest.mark.parametrize(("lam", "max_weight"), [(1.0, None), (0.4, None), (1.0, 1.0)])
def test_fused_cross_entropy_equals_act_loss_on_per_item_cross_entropy(
    lam: float, max_weight: float | None
) -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(40, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    y_machine = torch.randint(0, 5, (40,), generator=generator)
    y_human = torch.randint(0, 5, (40,), generator=generator)
    delta = torch.rand(40, generator=generator) < 0.4
    pi = torch.rand(40, generator=generator, dtype=torch.float64).clamp(min=0.1)
    fused = act_cross_entropy(logits, y_machine, y_human, delta, pi, lam, max_weight=max_weight)
    (fused_grad,) = torch.autograd.grad(fused, logits)
    reference = act_loss(
        functional.cross_entropy(logits, y_machine, reduction="none"),
        functional.cross_entropy(logits, torch.where(delta, y_human, -100), reduction="none"),
        delta,
        pi,
        lam,
        max_weight=max_weight,
    )
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(fused, reference)
    assert torch.allclose(fused_grad, reference_grad)


def test_fused_cross_entropy_passes_gradcheck() -> None:
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(8, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (8,), generator=generator)
    delta = [1, 0, 1, 0, 0, 1, 0, 0]
    pi = [0.5] * 8
    assert torch.autograd.gradcheck(
        lambda z: act_cross_entropy(z, labels, labels.flip(0), delta, pi), (logits,)
    )


def test_fused_cross_entropy_gives_the_same_gradient_on_a_second_backward() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    value = act_cross_entropy(logits, labels, labels.flip(0), [1, 0, 0, 1], [0.5] * 4)
    (first,) = torch.autograd.grad(value, logits, retain_graph=True)
    (second,) = torch.autograd.grad(value, logits)
    assert torch.equal(first, second)
