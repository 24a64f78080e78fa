"""The Lagrangian training attack: Algorithm 1 of Azizmalayeri & Rohban, "Lagrangian Objective
Function Leads to Improved Unforeseen Attack Generalization in Adversarial Training" (2021).

A few steps of gradient *ascent* on the C&W margin loss minus a fixed-schedule Lagrange
multiplier times ‖δ‖₂ (their §3):

    max_δ ℓ(f(x + δ), y) − λ′‖δ‖₂,   λ′ = λ·c^(1−i/N),  α′ = α·c^(i/N),  g ← g / max|g|.

Unlike ALMA it does not look for a *minimal* adversarial: it returns the last iterate, whose size
follows the classifier's confidence (their Fig. 2), for adversarial training. As in ALMA's
solver, the iterate lives in the [0, 1]-normalised input space (α, σ and ‖δ‖₂ are measured
there) and the model is called on lower + x̃·(upper − lower), so the hyperparameters hold for any
host bounds. Each step costs exactly one forward and one backward model propagation; the N-th
iterate is returned without being evaluated (N forwards, N backwards in all).

Where this departs from the text of Algorithm 1:
- x + δ is projected onto the input bounds after every step (the algorithm box has no
  projection; an attack must never return out-of-bounds inputs), as in the authors' code, and
  also after the initial draw, which the authors' code does not do (it calls the model on the
  unprojected x + δ⁽⁰⁾ and penalises the unprojected ‖δ⁽⁰⁾‖₂): here the model is never called
  outside its bounds. This changes the first step wherever the draw leaves the bounds (inputs
  at 0 or 1, as MNIST's background), and so the returned perturbation;
- ℓ is the C&W margin loss with confidence κ (``kappa``, default 1 logit, as in the authors'
  code): ℓ = min(max_{j≠y} z_j − z_y, κ), so a sample already misclassified by κ is pulled
  back by the penalty alone;
- the initial noise scale: the paper's σ² = 0.01 (σ = 0.1) is the default; the authors' code
  draws N(0, 0.01²), i.e. ``init_variance=1e-4``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, TypeVar

import eagerpy as ep
import numpy as np

from .autodiff import check_differentiable, value_aux_and_grad
from .model_checks import call_model, check_logits, warn_if_probabilities
from .params import NON_NEGATIVE, POSITIVE, check_fields
from .tensors import bounded_gradient, class_indices, expand, model_space
from .validation import Bounds, as_tensor, check_params_fit, working_dtype

__all__ = ["LAGRANGIAN_STEPS", "LagrangianParams", "LagrangianResult", "lagrangian_solve"]

T = TypeVar("T")
ModelFn = Callable[[ep.Tensor], Any]

#: N, the paper's number of iterations ("at least five steps are required", §3).
LAGRANGIAN_STEPS = 5


@dataclass(frozen=True)
class LagrangianParams:
    """Hyperparameters of the Lagrangian training attack (Algorithm 1 of Azizmalayeri & Rohban).

    σ² and c are the paper's defaults. The paper gives no α or λ for a data scale; the defaults
    were chosen for inputs in [0, 1] by a search on MNIST (README, "Lagrangian adversarial
    training"): α = 0.1 gives the iterate an ℓ∞ reach of α·Σᵢ c^(i/N) ≈ 0.24, the ε of the
    PGD-ℓ∞ model it is compared with; λ = 2 (the authors' CIFAR-10 value) keeps ‖δ‖₂ positively
    rank-correlated with the clean confidence on the regular and the PGD-trained SmallCNN, which
    λ = 8 does not. The SmallCNN trained with these defaults has a clean accuracy of 0.988
    (the PGD-trained one: 0.985).

    Attributes:
        init_lr: α, the initial step size, in the [0, 1]-normalised input space (each step moves
            the largest gradient coordinate by α′ = α·c^(i/N)).
        multiplier: λ, the Lagrange multiplier of ‖δ‖₂ (in logits per unit of normalised ℓ2);
            the schedule raises it from λ·c to λ·c^(1/N).
        init_variance: σ², variance of the initial perturbation δ ~ N(0, σ²) (per coordinate,
            normalised space); 0 starts from δ = 0 (then ‖δ‖₂'s gradient is taken as 0).
        decay: c ∈ (0, 1], the decay of α′ and the growth of λ′.
        kappa: κ, the C&W confidence: ℓ = min(margin, κ), in logits (inf: no clipping).
    """

    #: The hint for an ``eps=`` keyword (``takes_params``): this attack is not a minimal one.
    NO_BUDGET: ClassVar[str] = (
        "the Lagrangian attack has no ε budget: the size of its perturbations follows the "
        "multiplier λ (multiplier=) and the step size α (init_lr=)"
    )

    init_lr: float = 0.1
    multiplier: float = 2.0
    init_variance: float = 0.01
    decay: float = 0.1
    kappa: float = 1.0

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "init_lr": POSITIVE,
                "multiplier": NON_NEGATIVE,
                "init_variance": NON_NEGATIVE,
                "decay": (0.0, 1.0, True, False),
                "kappa": (0.0, math.inf, True, False),
            },
        )

    def schedule(self, step: int, steps: int) -> tuple[float, float]:
        """(λ′, α′) at step i of N: λ·c^(1−i/N) and α·c^(i/N) (Algorithm 1), for integers
        0 ≤ i < N (a ValueError naming them otherwise: N = 0 was a ZeroDivisionError, i ≥ N
        values beyond the algorithm's range)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < steps:
            raise ValueError(f"step must be an integer in [0, steps) = [0, {steps}), got {step!r}")
        fraction = step / steps
        return (
            self.multiplier * self.decay ** (1 - fraction),
            self.init_lr * self.decay**fraction,
        )


@dataclass(frozen=True)
class LagrangianResult(Generic[T]):
    """The outcome of the Lagrangian attack on a batch of N inputs.

    perturbed: x + δ after N steps, for every sample (it is a training perturbation, not a
        minimal adversarial: it may or may not fool the model); the inputs' type, dtype, device
        and shape, within the bounds.
    norms: (N,) ‖δ‖₂ of ``perturbed`` in the [0, 1]-normalised input space (:func:`lagrangian`:
        from the caller's inputs as given).
    """

    perturbed: T
    norms: T

    def map(self, convert: Callable[[Any], Any]) -> LagrangianResult[Any]:
        """The same result with ``convert`` applied to every tensor (e.g. eagerpy → raw)."""
        return replace(self, perturbed=convert(self.perturbed), norms=convert(self.norms))


def margin_loss(logits: ep.Tensor, labels: ep.Tensor, targeted: bool, kappa: float) -> ep.Tensor:
    """C&W's margin loss, to maximise: min(max_{j≠y} z_j − z_y, κ), or min(z_t − max_{j≠t} z_j,
    κ) towards a target t; positive exactly when the goal is met. (N,)."""
    label_logit = logits.take_along_axis(labels.expand_dims(-1), axis=-1).squeeze(-1)
    is_label = class_indices(labels, logits.shape[-1]) == labels.expand_dims(-1)
    others = ep.where(is_label, -ep.inf, logits).max(axis=-1)
    margin = label_logit - others if targeted else others - label_logit
    return margin if math.isinf(kappa) else margin.minimum(kappa)


def _per_sample_norm(x: ep.Tensor) -> ep.Tensor:
    return x.flatten(start=1).square().sum(axis=1).sqrt()


def lagrangian_solve(
    model: ModelFn,
    inputs: ep.Tensor,
    labels: ep.Tensor,
    *,
    params: LagrangianParams,
    steps: int = LAGRANGIAN_STEPS,
    bounds: Bounds = (0.0, 1.0),
    targeted: bool = False,
    seed: int | None = None,
) -> LagrangianResult[ep.Tensor]:
    """Run Algorithm 1 on a validated, non-empty batch. ``inputs`` lie in ``bounds``; ``labels``
    are the true classes, or the targets when ``targeted``. ``seed``: the initial noise comes
    from NumPy's generator seeded with it (the same for every framework); None draws it from
    the framework's own generator (``torch.manual_seed`` makes it reproducible)."""
    p = params
    lower, upper = bounds
    scale = upper - lower
    inputs = as_tensor("inputs", inputs)  # detached: no graph into the caller's tensor
    dtype = working_dtype(inputs)
    x = (inputs.astype(dtype) - lower) / scale  # the original input in [0, 1]
    check_params_fit(p, x)
    to_model_space, remeasures = model_space(inputs, x, bounds, dtype)

    # 1. δ ~ N(0, σ²), projected so that x + δ lies in the bounds.
    sigma = math.sqrt(p.init_variance)
    if seed is None:
        noise = ep.normal(x, x.shape).astype(dtype)
    else:
        draw = np.random.default_rng(seed).standard_normal(x.shape)
        noise = ep.from_numpy(x, draw).astype(dtype)
    x_adv = (x + sigma * noise).clip(0, 1)

    step = 0

    def loss_fn(u: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        logits = call_model(model, to_model_space(u))  # a clear error if it writes into u
        if step == 0:  # the class count K is only known once the model has answered
            check_logits(logits, labels, "targets" if targeted else "labels")
            check_differentiable(logits)
        if logits.dtype != dtype:
            logits = logits.astype(dtype)
        loss = margin_loss(logits, labels, targeted, p.kappa)  # ℓ(f(x + δ), y)
        return loss.sum(), logits

    for step in range(steps):
        # 2. λ′ ← λ·c^(1−i/N), α′ ← α·c^(i/N).
        multiplier, step_size = p.schedule(step, steps)
        # 3. g ← ∇(ℓ − λ′‖δ‖₂): one forward and one backward for ℓ; ‖δ‖₂'s gradient is δ/‖δ‖₂
        #    (0 at δ = 0). A NaN region of the model gives no step rather than a NaN iterate,
        #    an infinite gradient (a float16 model's backward) a bounded one.
        _, logits, grad = value_aux_and_grad(loss_fn, x_adv)
        if step == 0:  # κ is in logits: on probabilities the margin saturates
            warn_if_probabilities(logits, "the margin loss ℓ and its confidence κ")
        grad = bounded_gradient(grad)
        delta = x_adv - x
        norms = _per_sample_norm(delta)
        unit = delta / expand(ep.where(norms > 0, norms, 1), delta)
        grad = grad - multiplier * unit
        # 4. g ← g / max|g| (per sample; a zero gradient stays zero).
        largest = grad.flatten(start=1).abs().max(axis=1)
        grad = grad / expand(ep.where(largest > 0, largest, 1), grad)
        # 5. δ ← δ + α′g, with x + δ projected onto the bounds.
        x_adv = (x_adv + step_size * grad).clip(0, 1)

    perturbed = to_model_space(x_adv)
    judged = (perturbed.astype(dtype) - lower) / scale if remeasures else x_adv
    return LagrangianResult(perturbed=perturbed, norms=_per_sample_norm(judged - x))
