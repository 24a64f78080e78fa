"""``alma()``, ``alma_prox()`` and ``lagrangian()``: the attacks as functions, usable without
Foolbox or torchattacks, on PyTorch, JAX or TensorFlow tensors (or eagerpy tensors of them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import eagerpy as ep

from ._entry import (
    SuccessFn,
    check_distance_inputs,
    check_lpips_framework,
    checked_lpips,
    checked_masks,
    converted,
    empty,
    entry,
    judging,
    label_maps,
    measured_from_callers_inputs,
)
from .core.autodiff import autograd_allowed
from .core.graphs import check_cuda_graphs
from .core.keywords import takes_params
from .core.lagrangian import (
    LAGRANGIAN_STEPS,
    LagrangianParams,
    LagrangianResult,
    lagrangian_solve,
)
from .core.params import ALMA_STEPS, PROX_STEPS, ALMAParams
from .core.precision import warn_if_reduced_precision
from .core.prox_params import ProxParams, prox_params_for_linf
from .core.prox_solver import alma_prox_solve
from .core.result import AttackResult, StepInfo
from .core.solver import alma_solve
from .core.validation import (
    as_labels,
    check_bounds,
    check_choice,
    check_early_stop,
    check_flag,
    check_in_range,
    check_positive_int,
    container_shape,
    working_dtype,
)
from .distances import DISTANCES, DistanceFunction, get_distance, l2, linf
from .distances._ssim import check_padding_for, descent_objective

__all__ = ["alma", "alma_prox", "lagrangian"]

#: The name of the ℓ∞ distance, minimised by ALMA prox rather than by ALMA.
LINF = "linf"
#: Every spelling of it the entry points accept (``alma()`` and torchattacks' ``ALMA`` alike).
LINF_NAMES = ("linf", "l_inf", "inf")


def is_linf(distance: Any) -> bool:
    """Whether ``distance`` names ℓ∞ (any case of :data:`LINF_NAMES`)."""
    return isinstance(distance, str) and distance.lower() in LINF_NAMES


def check_attack_distance(distance: Any) -> str:
    """``distance`` of an entry point that takes ℓ∞ too: "linf" for any of :data:`LINF_NAMES`,
    else a registry name (lower case); an error listing every accepted name otherwise."""
    if is_linf(distance):
        return LINF
    return check_choice("distance", distance, [*sorted(DISTANCES), LINF])


def names_linf(arguments: dict[str, Any]) -> bool:
    """Whether a call's bound arguments ask for ℓ∞ (ALMA prox's hyperparameters)."""
    return is_linf(arguments.get("distance"))


@takes_params(ALMAParams, alternative=ProxParams, alternative_if=names_linf)
@autograd_allowed
def alma(
    model: Callable[[Any], Any],
    inputs: Any,
    labels: Any,
    *,
    distance: str = "l2",
    steps: int | None = None,
    targeted: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
    is_adversarial: SuccessFn | None = None,
    early_stop: float | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    seed: int = 0,
    lpips: DistanceFunction | None = None,
    padding: str | None = None,
    cuda_graphs: bool = False,
    params: ALMAParams | ProxParams | None = None,
) -> AttackResult[Any]:
    """Minimal adversarial examples by the Augmented Lagrangian Method (Rony et al., ICCV 2021).

    Solves min_δ D(x + δ, x) s.t. DLR⁺(f(x + δ), y) < 0 (eq. 5) with Algorithm 2; for
    ``distance="linf"``, with ALMA prox (thesis Algorithm IV-2, see :func:`alma_prox`).

    Args:
        model: f, a callable (e.g. ``torch.nn.Module``) mapping a batch in ``bounds`` to logits
            of shape (N, K). Its train/eval mode is left as the caller set it; a module with
            dropout or batch norm in training mode gets a ``TrainingModeWarning`` (they then
            change the model, and batch norm's running statistics are updated by every step).
        inputs: x, shape (N, ...), values within ``bounds``, any float dtype (float16 and
            bfloat16 models are called in their dtype; the solver's state is float32). Never
            modified; a ``requires_grad`` or inference-mode tensor is fine, and so is a call
            under ``torch.no_grad()`` or ``torch.inference_mode()``.
        labels: y, shape (N,), true classes — or target classes t when ``targeted``: any
            integer dtype, or a NumPy array / list of ints; on any device (moved to the
            inputs').
        distance: D, a name of ``alma_plugin.DISTANCES`` ("l1", "l2", "ciede2000", "ssim",
            "msssim", "lpips") or "linf" (ALMA prox; also "l_inf", "inf", as torchattacks'
            ``ALMA``).
        steps: N, the number of iterations (one forward + one backward each). None: the
            algorithm's budget, 1000 for ALMA (§4), 500 for ALMA prox ("linf", §5.5.5.3: its
            α = 0.8 is the thesis' value for 500 steps), as :func:`alma_prox`.
        targeted: use tDLR⁺ (eq. 18) towards ``labels`` instead of DLR⁺ (eq. 4).
        bounds: the model's input range; ε and distances live in the [0, 1]-normalised space.
        is_adversarial: optional success predicate (model_inputs, logits) → bool (N,), given
            tensors of the inputs' kind (raw, or eagerpy if eagerpy tensors were given); default
            argmax ≠ y (or = t when targeted). A sample whose logits or distance are not
            finite never counts as a success, whatever the predicate says.
        early_stop: stop once every sample has an adversarial with D below this value, in
            the [0, 1]-normalised units of ``result.distances`` whatever ``bounds`` are (0:
            never, as Foolbox's ``epsilons`` starting at 0.0 imply). The Foolbox classes take
            it in the raw units of their ``bounds``, as Foolbox's ``epsilons``. D is the
            solver's, from the inputs clipped onto the bounds: where an input left them by
            the rounding they tolerate, ``result.distances`` (from the input as given) can
            exceed ``early_stop`` by that rounding.
        callback: called with a :class:`~alma_plugin.StepInfo` after every step.
        seed: seeds the random directions used where a gradient vanishes and the random
            starts of ``restarts`` > 1.
        lpips: for ``distance="lpips"``, the network to use, e.g.
            ``alma_plugin.distances.LPIPS(backbone_weights=..., linear_weights=...)``, or
            any callable (x_adv, x) -> (N,) on tensors of the model's framework in [0, 1]
            (``torch.Tensor`` for PyTorch, as ``is_adversarial``); None: the default
            weights, looked for locally on first use (never downloaded). The package's LPIPS
            is a torch network: JAX and TensorFlow models need a metric of their own.
        padding: for "ssim" / "msssim", ``"symmetric"`` (default, also meant by None) or
            ``"valid"``: the windows whose SSIM gradient the attack descends, as the Foolbox
            ``SSIMALMA(padding=...)``. "symmetric": the full-coverage SSIM's gradient (one
            window per pixel, no perturbation pushed into the image border); "valid": the
            exact scikit-image SSIM itself (border artefact included, the stronger worst-case
            attack). The distances, ε, ``early_stop`` and success are the exact SSIM's either
            way (see :mod:`alma_plugin.distances._ssim`). Other distances: None only.
        cuda_graphs: PyTorch models on a CUDA device only: after 3 warm-up steps, replay each
            step as a CUDA graph (one launch instead of ~250 kernel launches: on an H100,
            SmallCNN at batch 100 runs 5.5–8.5× faster per call, at batch 1000 about 2×;
            docs/performance.md "CUDA graphs"). The same kernels, so the same results (with cuDNN's
            deterministic algorithms, the same bits; ALMA prox: to the last bits of a
            division). But the model's Python code (hooks, call counters, side effects of a
            Python ``is_adversarial``) runs for the warm-up and the captures only, and a model
            that reads a value back to the host during a step is a ``ValueError``.
        params: an :class:`~alma_plugin.ALMAParams` whose fields the hyperparameter keywords
            below replace; for "linf", a :class:`~alma_plugin.ProxParams` (then no keyword:
            an ALMA hyperparameter keyword with "linf" is a ``TypeError``, even at its default).
        **hyperparameters: every field of :class:`~alma_plugin.ALMAParams` (``alpha``,
            ``init_lr_distance``, ``init_lr``, ``lr_reduction``, ``penalty``, ``mu_init``, …),
            with the paper's defaults, as ``inspect.signature(alma)`` shows, but for
            ``smooth_max`` (None: the distance's κ, ``DISTANCES[name].smooth_max``; 0:
            Algorithm 2's gradient) and ``restarts`` (None: the distance's class restarts,
            for untargeted ℓ1 / ℓ2 attacks of at least 100 steps two runs, run 1 aimed at
            another class, see :class:`~alma_plugin.ALMAParams`; 1: one run). Algorithm 2
            as published: ``params=ALMAParams.published()`` (``restarts=1, smooth_max=0``).

    Returns:
        An :class:`~alma_plugin.AttackResult` of tensors of the inputs' kind (raw, or eagerpy
        if eagerpy tensors were given).

    Example:
        >>> import torch
        >>> from alma_plugin import alma
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
        >>> result = alma(model, x, y, distance="l2", steps=100)
        >>> result.adversarials.shape
        torch.Size([2, 1, 2, 2])
    """
    if check_attack_distance(distance) == LINF:
        shape = container_shape("labels", labels)
        if len(shape) > 1:  # alma() is for classification: one way to attack label maps
            raise ValueError(
                f"labels must have shape (N,) with distance='linf' (classification), got shape "
                f"{shape}; for (N, H, W) label maps (segmentation), call "
                "alma_prox(model, inputs, labels, masks=..., adv_threshold=...)"
            )
        params = prox_params_for_linf(params)
        if lpips is not None:
            raise ValueError(f"lpips= is only used with distance='lpips', got {distance!r}")
        check_padding_for(LINF, padding)
        steps = PROX_STEPS if steps is None else steps
        return alma_prox(model, inputs, labels, steps=steps, targeted=targeted, bounds=bounds,
                         is_adversarial=is_adversarial, early_stop=early_stop,
                         callback=callback, seed=seed, cuda_graphs=cuda_graphs,
                         params=params)  # fmt: skip
    spec = get_distance(distance)
    params = ALMAParams() if params is None else params
    if not isinstance(params, ALMAParams):
        raise TypeError(f"params must be an ALMAParams for distance={distance!r}, got {params!r}")
    # The objective descended: the distance itself, except SSIM / MS-SSIM, whose exact value
    # is kept with the full-coverage gradient (no perturbation pushed into the borders) unless
    # padding="valid" asks for the exact SSIM's own gradient.
    function = spec.objective if lpips is None else checked_lpips(lpips, spec.name)
    windows = check_padding_for(spec.name, padding)
    if windows is not None:
        function = descent_objective(spec.name, windows)
    steps = check_positive_int("steps", ALMA_STEPS if steps is None else steps)
    check_positive_int("seed", seed, minimum=0)
    bounds = check_bounds(bounds)
    targeted = check_flag("targeted", targeted)
    x, restore, given = entry(model, inputs, bounds, is_adversarial, callback)
    graphs = check_cuda_graphs(cuda_graphs, x)
    check_distance_inputs(spec.name, x)
    if spec.name == "lpips":
        check_lpips_framework(lpips, x)
    y = as_labels("targets" if targeted else "labels", labels, x, (len(x),))
    stop = check_early_stop(early_stop)
    if len(x) == 0:
        return empty(x, y, restore)
    warn_if_reduced_precision(x)
    result = alma_solve(
        lambda batch: model(batch.raw),
        x,
        y,
        distance=function,
        params=spec.alma_params(params, steps, targeted),
        params_for_classes=lambda classes: spec.alma_params(params, steps, targeted, classes),
        steps=steps,
        bounds=bounds,
        targeted=targeted,
        is_adversarial=judging(is_adversarial, restore),
        callback=None if callback is None else converted(callback, restore),
        early_stop=stop,
        seed=seed,
        cuda_graphs=graphs,
    )
    measure = spec.function if lpips is None else function  # the exact D the solver reports
    distances = measured_from_callers_inputs(
        result.distances, result.adversarials, given, x, bounds, measure
    )
    return replace(result, distances=distances).map(restore)


@takes_params(ProxParams)
@autograd_allowed
def alma_prox(
    model: Callable[[Any], Any],
    inputs: Any,
    labels: Any,
    *,
    masks: Any = None,
    targeted: bool = False,
    adv_threshold: float = 0.99,
    steps: int = PROX_STEPS,
    bounds: tuple[float, float] = (0.0, 1.0),
    is_adversarial: SuccessFn | None = None,
    early_stop: float | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    seed: int = 0,
    cuda_graphs: bool = False,
    params: ProxParams | None = None,
) -> AttackResult[Any]:
    """Minimal ℓ∞ adversarial examples by ALMA prox (Rony, Pesquet & Ben Ayed, CVPR 2023;
    Rony's thesis §5.4, Algorithm IV-2), for classification and dense prediction.

    Solves min ‖δ‖∞ s.t. DLR⁺(f(x + δ)_i, y_i) ≤ 0 for the constraints i (eq. 5.3): one per
    sample when ``labels`` is (N,) and the model returns logits (N, K); one per pixel of the
    mask m when ``labels`` is (N, H, W) and the logits (N, K, H, W) (semantic segmentation,
    where success is an attack pixel success rate APSR ≥ ν, eq. 5.19). Forward-backward
    splitting with an Adam-like diagonal metric and the exact prox of λ‖·‖∞ + ι_Λ (eq. 5.14
    solved from its sorted breakpoints; ``prox_precision=Δβ``: Algorithm 5.1's ternary search),
    constraint masking and scaling (eq. 5.6, 5.8).

    Args:
        model, inputs, targeted, bounds, is_adversarial, early_stop, callback: as :func:`alma`
            (the distance is the normalised ‖δ‖∞; ``is_adversarial`` applies to (N,) labels).
        labels: (N,) classes, or (N, H, W) label maps (any integer dtype, container and
            device, as for :func:`alma`): the true classes y, or the targets t when
            ``targeted``. Values outside ``masks`` are ignored (e.g. 255).
        masks: optional booleans (or 0/1) of the labels' shape: the pixels m to attack; the
            others count neither in the APSR nor in the objective (eq. 5.5), and their labels
            are never read (an ignore index: ``masks=labels != 255``). Every sample needs at
            least one pixel (APSR would be 0/0): an all-False mask is a ValueError. A tensor of
            any framework or device, a NumPy array or a list, as for ``labels``: moved to the
            inputs'.
        adv_threshold: ν: success means APSR ≥ ν, in (0, 1]. Dense labels only: with (N,)
            labels a sample has one constraint, and every ν in (0, 1] means that it holds.
        steps: N, the number of iterations (one forward and one backward each).
        seed: seeds the random starts of ``restarts`` > 1 (run 0 starts at δ = 0 and draws
            nothing: with one run, the attack is deterministic whatever the seed).
        cuda_graphs: as :func:`alma`.
        params: a :class:`~alma_plugin.ProxParams` whose fields the keywords below replace.
        **hyperparameters: every field of :class:`~alma_plugin.ProxParams`; ``init_lr``,
            ``rho_init`` and ``smooth_max`` left at None take λ⁽⁰⁾, ρ⁽⁰⁾ and κ for the task
            (``PROX_INIT_LR``, ``PROX_RHO_INIT``, ``PROX_SMOOTH_MAX``: classification or
            segmentation).

    Returns:
        An :class:`~alma_plugin.AttackResult` with ``apsr`` set (and ``predictions`` in
        classification; None for dense outputs), of the inputs' tensor kind.

    Example:
        >>> import torch
        >>> from alma_plugin import alma_prox
        >>> net = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
        >>> images = torch.rand(2, 3, 8, 8)
        >>> result = alma_prox(net, images, net(images).argmax(1), steps=20)
        >>> result.apsr.shape
        torch.Size([2])
    """
    assert isinstance(params, ProxParams)
    steps = check_positive_int("steps", steps)
    check_positive_int("seed", seed, minimum=0)
    bounds = check_bounds(bounds)
    nu = check_in_range("adv_threshold", adv_threshold, 0.0, 1.0, open_low=True)
    targeted = check_flag("targeted", targeted)
    x, restore, given = entry(model, inputs, bounds, is_adversarial, callback)
    graphs = check_cuda_graphs(cuda_graphs, x)
    y = label_maps(labels, x, "targets" if targeted else "labels")
    dense = y.ndim > 1
    if masks is not None and not dense:
        raise ValueError(f"masks select pixels of (N, H, W) label maps (segmentation); with "
                         f"(N,) labels, of shape {tuple(y.shape)}, leave masks=None")  # fmt: skip
    m = None if masks is None else checked_masks(masks, y)
    if is_adversarial is not None and dense:
        raise ValueError("is_adversarial applies to (N,) labels; dense labels use adv_threshold")
    stop = check_early_stop(early_stop)
    if len(x) == 0:
        return empty(x, y.reshape((0,)), restore, apsr=True, predictions=not dense)
    warn_if_reduced_precision(x)
    result = alma_prox_solve(
        lambda batch: model(batch.raw),
        x,
        y,
        params=params.for_task("segmentation" if dense else "classification"),
        steps=steps,
        bounds=bounds,
        targeted=targeted,
        masks=m,
        adv_threshold=nu if dense else 1.0,
        is_adversarial=judging(is_adversarial, restore),
        early_stop=stop,
        callback=None if callback is None else converted(callback, restore),
        seed=seed,
        cuda_graphs=graphs,
    )
    distances = measured_from_callers_inputs(
        result.distances, result.adversarials, given, x, bounds, linf
    )
    return replace(result, distances=distances).map(restore)


@takes_params(LagrangianParams)
@autograd_allowed
def lagrangian(
    model: Callable[[Any], Any],
    inputs: Any,
    labels: Any,
    *,
    steps: int = LAGRANGIAN_STEPS,
    targeted: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = None,
    params: LagrangianParams | None = None,
) -> LagrangianResult[Any]:
    """The Lagrangian training attack (Azizmalayeri & Rohban, 2021, Algorithm 1): N steps of
    gradient ascent on ℓ(f(x + δ), y) − λ′‖δ‖₂ with the C&W margin loss ℓ, a fixed schedule
    λ′ = λ·c^(1−i/N), α′ = α·c^(i/N), max-normalised gradients and δ⁽⁰⁾ ~ N(0, σ²).

    Made for adversarial *training* (see :func:`alma_plugin.training.adversarial_training`):
    the size of δ follows the classifier's confidence (their Fig. 2), and the last iterate is
    returned for every sample, whether it fools the model or not. Costs exactly N forward and N
    backward propagations. x + δ is kept within ``bounds`` (projected after every step).

    Args:
        model, inputs, targeted, bounds: as :func:`alma` (α, σ and ‖δ‖₂ live in the
            [0, 1]-normalised input space, so the defaults hold for any bounds).
        labels: y, the true classes (N,), or the targets t when ``targeted``.
        steps: N, the number of iterations (the paper: at least 5).
        seed: the initial noise is drawn from NumPy's generator with this seed (the same noise
            in every framework); None (default, as for a training loop, where every batch
            needs fresh noise): the framework's generator (``torch.manual_seed`` makes it
            reproducible).
        params: a :class:`~alma_plugin.LagrangianParams` whose fields the keywords below replace.
        **hyperparameters: every field of :class:`~alma_plugin.LagrangianParams`: ``init_lr``
            (α), ``multiplier`` (λ), ``init_variance`` (σ²), ``decay`` (c), ``kappa`` (κ).

    Returns:
        A :class:`~alma_plugin.LagrangianResult`: ``perturbed`` (x + δ) and ``norms`` (‖δ‖₂ in
        the normalised space), tensors of the inputs' kind.

    Example:
        >>> import torch
        >>> from alma_plugin import lagrangian
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
        >>> result = lagrangian(model, x, y, seed=0)
        >>> result.perturbed.shape, result.norms.shape
        (torch.Size([2, 1, 2, 2]), torch.Size([2]))
    """
    assert isinstance(params, LagrangianParams)
    steps = check_positive_int("steps", steps)
    if seed is not None:
        check_positive_int("seed", seed, minimum=0)
    bounds = check_bounds(bounds)
    targeted = check_flag("targeted", targeted)
    x, restore, given = entry(model, inputs, bounds, None, None)
    y = as_labels("targets" if targeted else "labels", labels, x, (len(x),))
    if len(x) == 0:
        norms = ep.zeros(x, (0,)).astype(working_dtype(x))  # as for a non-empty batch
        return LagrangianResult(x, norms).map(restore)
    result = lagrangian_solve(
        lambda batch: model(batch.raw),
        x,
        y,
        params=params,
        steps=steps,
        bounds=bounds,
        targeted=targeted,
        seed=seed,
    )
    norms = measured_from_callers_inputs(result.norms, result.perturbed, given, x, bounds, l2)
    return replace(result, norms=norms).map(restore)
