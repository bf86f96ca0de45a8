"""The ACT loss and PPI++ power tuning.

    L_ACT(theta) = 1/N sum_i [ lam * l_m,i + (l_h,i - lam * l_m,i) * delta_i / pi_i ]

with l_m,i = l(theta; x_i, y_m,i) the loss on the machine label and l_h,i on the human one.

lam = 1 is the ACT loss of Lin et al. (NeurIPS 2025, adapting active M-estimation of
Zrnic & Candès, ICML 2024): since E[delta_i / pi_i] = 1 it is unbiased for the loss on fully
human-labelled data whenever pi_i > 0. lam in [0, 1] is PPI++ power tuning (Angelopoulos,
Duchi & Zrnic 2023); lam = 0 is pure inverse-probability weighting of the human labels.

Clipping the human weight delta/pi at `max_weight` trades that unbiasedness for variance
(DESIGN.md §2.1, "What works in training"): with max_weight = 1 and lam = 1 the loss is
cross-entropy on the ACT data (human label where reviewed, machine label elsewhere).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional


def act_weights(
    delta: object,
    pi: object,
    lam: float = 1.0,
    *,
    max_weight: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item weights (w_machine, w_human) with L_ACT = mean(w_machine * l_m + w_human * l_h).

    w_human = delta / pi (clipped at max_weight if given) and w_machine = lam * (1 - w_human).
    Items with delta = 0 get w_human = 0 whatever pi is (pi = 0 is allowed there: the item
    simply contributes its machine loss, which is biased only for that item).
    Raises ValueError for delta = 1 with pi = 0, pi outside [0, 1], delta not 0/1, lam
    outside [0, 1], max_weight < 1 or mismatched lengths.
    """
    delta_t, pi_t = _check_delta_pi(delta, pi, dtype, device)
    _check_lam(lam)
    if max_weight is not None and not max_weight >= 1.0:
        raise ValueError(
            f"max_weight must be >= 1 (a reviewed item counts at least once), got {max_weight}"
        )
    # pi is replaced by 1 where delta = 0 so that 0/0 never appears; delta = 1 with pi = 0
    # gives inf, which the check below turns into an error.
    w_human = delta_t.to(dtype) / torch.where(delta_t, pi_t, 1.0)
    if not torch.isfinite(w_human).all():
        bad = torch.nonzero(~torch.isfinite(w_human))[:, 0]
        raise ValueError(
            f"{bad.numel()} reviewed item(s) have pi = 0 (first at index {int(bad[0])}): "
            "delta = 1 is impossible there, and the weight delta/pi would be infinite"
        )
    if max_weight is not None:
        w_human = w_human.clamp(max=max_weight)
    return lam * (1.0 - w_human), w_human


def act_loss(
    loss_machine: torch.Tensor,
    loss_human: torch.Tensor,
    delta: object,
    pi: object,
    lam: float = 1.0,
    *,
    max_weight: float | None = None,
) -> torch.Tensor:
    """Mean ACT loss from per-item losses on the machine labels and on the human labels.

    `loss_human` is read only where delta = 1: other entries may be NaN (no human label) and
    are masked out of both the value and the gradient with respect to `loss_human`. (If the
    graph upstream of a masked entry has NaN derivatives, e.g. a loss computed from a NaN
    target, mask the targets first; `act_cross_entropy` does that for classification.)
    """
    if loss_machine.ndim != 1 or loss_human.shape != loss_machine.shape:
        raise ValueError(
            "loss_machine and loss_human must be 1-D per-item losses of the same shape, got "
            f"{tuple(loss_machine.shape)} and {tuple(loss_human.shape)}"
        )
    w_machine, w_human = act_weights(
        delta,
        pi,
        lam,
        max_weight=max_weight,
        dtype=loss_machine.dtype,
        device=loss_machine.device,
    )
    if w_machine.shape[0] != loss_machine.shape[0]:
        raise ValueError(
            f"per-item losses have {loss_machine.shape[0]} entries but delta/pi have "
            f"{w_machine.shape[0]}"
        )
    human_term = torch.where(w_human != 0, loss_human, 0.0) * w_human
    return (w_machine * loss_machine + human_term).mean()


def act_cross_entropy(
    logits: torch.Tensor,
    y_machine: torch.Tensor,
    y_human: torch.Tensor,
    delta: object,
    pi: object,
    lam: float = 1.0,
    *,
    max_weight: float | None = None,
) -> torch.Tensor:
    """ACT loss with per-item cross-entropy; y_human may hold any value (e.g. -1) where delta = 0.

    The same value as `act_loss` on per-item cross-entropies, computed in one fused pass:
    the log-softmax is taken once, and the gradient with respect to the logits is
    (w_m + w_h) * softmax - w_m * onehot(y_m) - w_h * onehot(y_h), per item over N, which is
    what plain cross-entropy's backward costs. Unreviewed items have w_h = 0, so their
    human label is never read.
    """
    delta_mask = torch.as_tensor(delta, device=logits.device).to(torch.bool)
    if (
        logits.ndim != 2
        or y_machine.shape != (logits.shape[0],)
        or y_human.shape != y_machine.shape
        or delta_mask.shape != y_machine.shape
    ):
        raise ValueError(
            f"expected logits (N, C) and labels (N,): got logits {tuple(logits.shape)}, "
            f"y_machine {tuple(y_machine.shape)}, y_human {tuple(y_human.shape)}, "
            f"delta {tuple(delta_mask.shape)}"
        )
    w_machine, w_human = act_weights(
        delta_mask, pi, lam, max_weight=max_weight, dtype=logits.dtype, device=logits.device
    )
    labels, weights = act_targets(y_machine, y_human, w_machine, w_human)
    return weighted_act_cross_entropy(logits, labels, weights)


def act_targets(
    y_machine: torch.Tensor, y_human: torch.Tensor, w_machine: torch.Tensor, w_human: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ACT loss's per-item targets: labels (N, 2) = (y_m, y_h) and weights (N, 2) =
    (w_m, w_h) from `act_weights`; y_h is replaced by y_m where w_h = 0, so it is never read
    there (it may be -1)."""
    labels = torch.stack([y_machine, torch.where(w_human != 0, y_human, y_machine)], dim=1)
    return labels, torch.stack([w_machine, w_human], dim=1)


def weighted_act_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """mean_i [w_m,i * CE(logits_i, y_m,i) + w_h,i * CE(logits_i, y_h,i)], fused, on targets
    from `act_targets`.

    Nothing is checked here: `act_weights` checks delta and pi. A trainer computes the targets
    once per epoch for the whole data set and slices them per mini-batch, because on small
    batches the checks and the stacking cost more than the loss itself.
    """
    return _WeightedCrossEntropy.apply(logits, labels, weights)


class _WeightedCrossEntropy(torch.autograd.Function):
    """mean_i sum_j weights[i, j] * (-log softmax(logits_i)[labels[i, j]]), fused."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        logits: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        log_probs = functional.log_softmax(logits, dim=1)
        ctx.save_for_backward(labels, weights, logits)
        # An intermediate, kept on ctx: backward turns it into the gradient in place.
        ctx.log_probs = log_probs  # type: ignore[attr-defined]
        return -(log_probs.gather(1, labels) * weights).sum() / logits.shape[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        labels, weights, logits = ctx.saved_tensors  # type: ignore[attr-defined]
        log_probs = ctx.log_probs  # type: ignore[attr-defined]
        if log_probs is None:  # a second backward (retain_graph=True): recompute
            log_probs = functional.log_softmax(logits.detach(), dim=1)
        ctx.log_probs = None  # type: ignore[attr-defined]
        scaled = weights * (grad_output / log_probs.shape[0])
        # The saved buffer becomes the gradient in place: no new (N, C) allocation.
        grad = log_probs.exp_().mul_(scaled.sum(dim=1, keepdim=True))
        return grad.scatter_add_(1, labels, -scaled), None, None


def power_tuning_lambda(
    stat_machine: object, stat_human: object, delta: object, pi: object
) -> float:
    """PPI++ power-tuning estimate of lam from the reviewed items, clipped to [0, 1].

    Conditional on the data, item i's term Z_i = lam * m_i + (h_i - lam * m_i) delta_i / pi_i
    has variance (h_i - lam * m_i)^2 (1 - pi_i) / pi_i, minimised by

        lam* = sum_i (1 - pi_i)/pi_i * h_i . m_i  /  sum_i (1 - pi_i)/pi_i * |m_i|^2

    (Angelopoulos, Duchi & Zrnic 2023, PPI++; Zrnic & Candès 2024 for the active form). The
    numerator needs h_i, so it is estimated over reviewed items weighted by delta_i / pi_i;
    the denominator uses every item. Statistics are per-item losses (shape (N,)) or per-item
    gradients (shape (N, d), dot products taken). Items with pi = 1 carry no variance; if
    all have pi = 1 any lam is optimal and 1 is returned.
    """
    machine = np.asarray(stat_machine, dtype=np.float64)
    human = np.asarray(stat_human, dtype=np.float64)
    delta_t, pi_t = _check_delta_pi(delta, pi)
    delta_array, pi_array = delta_t.numpy(), pi_t.numpy()
    if machine.shape != human.shape or machine.shape[0] != pi_array.size:
        raise ValueError(
            f"stat_machine {machine.shape}, stat_human {human.shape} and pi ({pi_array.size},) "
            "must describe the same items"
        )
    if (pi_array == 0).any():
        raise ValueError("power tuning needs pi > 0 for every item (1/pi is unbounded)")
    if not delta_array.any():
        raise ValueError("power tuning needs at least one reviewed item (delta = 1)")
    if not np.isfinite(machine).all() or not np.isfinite(human[delta_array]).all():
        raise ValueError("statistics must be finite (human ones where delta = 1)")
    machine = machine.reshape(machine.shape[0], -1)
    human = np.where(delta_array[:, None], human.reshape(human.shape[0], -1), 0.0)
    variance_factor = (1.0 - pi_array) / pi_array
    cross = np.einsum("ij,ij->i", human, machine)
    numerator = float(np.sum(delta_array / pi_array * variance_factor * cross))
    denominator = float(np.sum(variance_factor * np.einsum("ij,ij->i", machine, machine)))
    if denominator == 0.0:
        return 1.0
    return float(np.clip(numerator / denominator, 0.0, 1.0))


def _check_delta_pi(
    delta: object,
    pi: object,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """delta as a bool tensor and pi as a float tensor, both 1-D and checked."""
    delta_raw = torch.as_tensor(np.asarray(delta) if not torch.is_tensor(delta) else delta)
    if delta_raw.dtype != torch.bool and not ((delta_raw == 0) | (delta_raw == 1)).all():
        raise ValueError("delta must hold only 0/1 or booleans")
    delta_t = delta_raw.to(device=device, dtype=torch.bool).reshape(-1)
    pi_raw = pi if torch.is_tensor(pi) else np.asarray(pi, dtype=np.float64)
    pi_t = torch.as_tensor(pi_raw).to(device=device, dtype=dtype).reshape(-1)
    if delta_t.shape != pi_t.shape:
        raise ValueError(f"delta has {delta_t.shape[0]} entries but pi has {pi_t.shape[0]}")
    if pi_t.numel():
        lowest, highest = torch.aminmax(pi_t)
        if not (lowest >= 0 and highest <= 1):  # NaN propagates and fails both
            raise ValueError("pi must be finite and in [0, 1]")
    return delta_t, pi_t


def _check_lam(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
