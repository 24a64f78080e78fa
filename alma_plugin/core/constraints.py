"""The misclassification constraint: DLR⁺ (eq. 4) and tDLR⁺ (eq. 18) of the ALMA paper.

Both are negative exactly when the attack goal is met (misclassification, or classification as
the target), so the attack solves min D(x̃, x) s.t. d(x̃) < 0. The numerator is the logit
margin; the denominator makes the value invariant to the logits' scale.

Small class counts: DLR⁺ needs the third-largest logit and tDLR⁺ the fourth. Where that logit
does not exist (K = 2 for DLR⁺, K ≤ 3 for tDLR⁺) both fall back to the plain logit difference
of eq. 3. (With K = 3 a tDLR⁺ built on DLR⁺'s denominator would be identically 1, with zero
gradient, whenever the target has the lowest logit.)
"""

from __future__ import annotations

import eagerpy as ep

from .autodiff import stop_gradient
from .tensors import class_indices

#: Margin (in logits) a sample must clear to count as satisfying the constraint, so that an
#: exact argmax tie never counts as success.
LOGIT_TOLERANCE = 1e-6
#: Not in the paper: keeps d finite where the top three logits tie (z_π1 − z_π3 = 0).
_DENOMINATOR_FLOOR = 1e-12


def _margin(logits: ep.Tensor, labels: ep.Tensor, targeted: bool) -> ep.Tensor:
    """z_y − max_{i≠y} z_i (untargeted) or max_{i≠t} z_i − z_t (targeted), plus the tolerance.

    Logits have shape (..., K) and labels (...): one constraint per sample, or per pixel."""
    label_logit = logits.take_along_axis(labels.expand_dims(-1), axis=-1).squeeze(-1)
    is_label = class_indices(labels, logits.shape[-1]) == labels.expand_dims(-1)
    others = ep.where(is_label, -ep.inf, logits).max(axis=-1)
    margin = others - label_logit if targeted else label_logit - others
    return margin + LOGIT_TOLERANCE


def dlr_plus(logits: ep.Tensor, labels: ep.Tensor, targeted: bool = False) -> ep.Tensor:
    """DLR⁺(z, y) (eq. 4), or tDLR⁺(z, t) (eq. 18) when ``targeted``, for logits (..., K) and
    labels (...): one value per constraint. Negative exactly when the goal is met.

    ``labels`` holds the true classes y, or the targets t when ``targeted``.
    """
    margin = _margin(logits, labels, targeted)
    if logits.shape[-1] < (4 if targeted else 3):
        return margin  # eq. 3: the denominator's π3 (π4) does not exist
    scale, missing = _denominator(logits, targeted)
    return ep.where(missing, margin, margin / scale)


def _denominator(logits: ep.Tensor, targeted: bool) -> tuple[ep.Tensor, ep.Tensor]:
    """DLR⁺'s denominator z_π1 − z_π3 (tDLR⁺'s z_π1 − (z_π3 + z_π4)/2) per constraint, for
    K ≥ 3 (4) classes, and where it is replaced by 1 (eq. 3)."""
    if targeted:
        top, _ = logits.topk(4, sorted=True)
        scale = top[..., 0] - (top[..., 2] + top[..., 3]) / 2
        lowest = top[..., 3]
    else:
        top, _ = logits.topk(3, sorted=True)
        scale = top[..., 0] - top[..., 2]
        lowest = top[..., 2]
    # A −∞ logit is a class of probability 0 (log-softmax underflowing): where π3 (π4) is one,
    # the denominator is +∞ and d ≡ 0; such a constraint falls back to eq. 3, as for small K
    # (its denominator set to 1 first, so that no ∞/∞ reaches the gradient through where).
    missing = lowest == -ep.inf
    return ep.where(missing, 1.0, scale).maximum(_DENOMINATOR_FLOOR), missing


def smoothed_dlr_plus(logits: ep.Tensor, labels: ep.Tensor, temperature: float) -> ep.Tensor:
    """DLR⁺(z, y) (eq. 4) in value, with the gradient of (z_y − LSE(z_{i≠y}))/s: the max over
    the other classes smoothed into a log-sum-exp of temperature κ·s (κ = ``temperature``), at
    the current denominator s (held fixed). Not in the papers (``ProxParams.smooth_max``).

    DLR⁺'s gradient moves the logits of y and of the runner-up only, so a short run heads for
    the runner-up even where another class lies closer; the log-sum-exp's gradient weighs every
    other class i by softmax(z_i / κs), those nearly as likely as the runner-up included. The
    value, so success, the multipliers and the masking, stays DLR⁺'s exactly (d + g − g for a
    finite g is d bit for bit; an infinite g is left out). The gradient is only that of
    Σ_i w_i z_i with the weights w held fixed, equal to the log-sum-exp's; it tends to DLR⁺'s
    at a fixed denominator as κ → 0.
    """
    d = stop_gradient(dlr_plus(logits, labels))
    z = stop_gradient(logits)
    num_classes = z.shape[-1]
    scale = _denominator(z, False)[0] if num_classes >= 3 else ep.ones(z, z.shape[:-1])
    is_label = class_indices(labels, num_classes) == labels.expand_dims(-1)
    others = ep.where(is_label, -ep.inf, z)
    shifted = (others - others.max(axis=-1, keepdims=True)) / (temperature * scale).expand_dims(-1)
    weights = shifted.exp()
    weights = weights / weights.sum(axis=-1, keepdims=True)  # softmax of the others; 0 at y
    weights = ep.where(weights > 0, weights, 0.0)  # NaN (every other logit −∞) → no weight
    # logits where their weight is 0 (y, −∞ logits) leave the sum: 0 · (−∞) would be NaN
    weighted = (weights * ep.where(weights > 0, logits, 0.0)).sum(axis=-1)
    label_logit = logits.take_along_axis(labels.expand_dims(-1), axis=-1).squeeze(-1)
    direction = (label_logit - weighted) / scale
    # an infinite logit (y's at −∞: misclassified whatever moves) makes the direction ±∞ and
    # g − g NaN: those constraints keep DLR⁺'s value with no gradient, as DLR⁺ gives them
    finite = ep.logical_not(ep.logical_or(direction.isnan(), direction.isinf()))
    return d + ep.where(finite, direction - stop_gradient(direction), 0.0)


def descent_constraint(
    logits: ep.Tensor, labels: ep.Tensor, targeted: bool, smooth_max: float
) -> ep.Tensor:
    """The constraint d a solver step descends (step 4 of Algorithm 2 / IV-2): tDLR⁺ when
    ``targeted`` (a targeted attack, or a run aimed at a class), else DLR⁺, whose gradient is
    that of its smoothed max where ``smooth_max`` = κ > 0 (:func:`smoothed_dlr_plus`; κ = 0 is
    DLR⁺ itself)."""
    if targeted or not smooth_max:
        return dlr_plus(logits, labels, targeted)
    return smoothed_dlr_plus(logits, labels, smooth_max)


def _most_likely_other(
    logits: ep.Tensor, labels: ep.Tensor, excluded: tuple[ep.Tensor, ...]
) -> tuple[ep.Tensor, ep.Tensor]:
    """Per constraint, the class with the largest logit other than its label and the classes
    in ``excluded`` (−1: none), and where every class is taken."""
    classes = class_indices(labels, logits.shape[-1])
    taken = classes == labels.expand_dims(-1)
    for other in excluded:
        taken = ep.logical_or(taken, classes == other.expand_dims(-1))
    goal = ep.where(taken, -ep.inf, logits).argmax(axis=-1).astype(labels.dtype)
    return goal, taken.all(axis=-1)


def check_class_restarts(num_classes: int, restarts: int) -> None:
    """``restart_mode="classes"`` aims run k at a class that neither the label nor runs
    1 … k − 1 aimed at: runs 1 … R − 1 take R − 1 classes besides the label, so R runs need
    K ≥ R classes, and a run aimed at a class needs one besides the label and the class run 0
    heads for: K ≥ 3 (with K = 2, tDLR⁺ towards the other class is DLR⁺, run 0's problem). The
    solvers check it at run 0's first forward (where K becomes known), before the other runs
    spend their model calls."""
    if restarts > 1 and num_classes < 3:
        raise ValueError(
            f"restart_mode='classes' aims runs 1 … R − 1 at classes other than the label and "
            f"the one run 0 heads for, which a model with K={num_classes} classes does not "
            f"have (a run aimed at the other class would solve run 0's problem again): pass "
            f"restarts=1, or restart_mode='random' (got restarts={restarts})"
        )
    if restarts > 1 and num_classes < restarts:
        raise ValueError(
            f"restart_mode='classes' aims run k at a class that neither the label nor runs "
            f"1 … k − 1 aimed at, so restarts=R needs at least R classes: got "
            f"restarts={restarts} and a model with K={num_classes} classes"
        )


def restart_goal(logits: ep.Tensor, labels: ep.Tensor, reached: tuple[ep.Tensor, ...]) -> ep.Tensor:
    """The class run k = len(reached) of ``restart_mode="classes"`` aims at, per constraint,
    for logits (..., K) at x: the most likely class other than the label, than the goals of
    runs 1 … k − 1 and than the classes of the adversarials runs 0 … k − 1 returned
    (``reached``, shaped like ``labels``; −1 where a run found none). Where that leaves no
    class, the most likely one other than the label and the earlier goals. The earlier goals
    are recomputed from the same logits (every such run starts at x), so no run has to hand
    its goal on. As AutoAttack's APGD-T and FAB-T aim at the top classes; needs K ≥ k + 1."""
    check_class_restarts(logits.shape[-1], len(reached) + 1)
    goals: tuple[ep.Tensor, ...] = ()
    for run in range(1, len(reached) + 1):
        preferred, none_left = _most_likely_other(logits, labels, goals + reached[:run])
        fallback, _ = _most_likely_other(logits, labels, goals)
        goals += (ep.where(none_left, fallback, preferred),)
    return goals[-1]


def is_satisfied(logits: ep.Tensor, labels: ep.Tensor, targeted: bool = False) -> ep.Tensor:
    """The default success predicate: argmax ≠ y (untargeted) or argmax = t (targeted),
    decided with the same tolerance as the constraint so ties never count as success."""
    return _margin(logits, labels, targeted) < 0
