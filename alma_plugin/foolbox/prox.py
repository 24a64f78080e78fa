"""ALMA prox (Rony et al., CVPR 2023; thesis §5.4, Algorithm IV-2) as a Foolbox 3 ℓ∞
minimisation attack, :class:`LinfALMAProx`. The algorithm lives in
:func:`alma_plugin.core.prox_solver.alma_prox_solve`; this module only translates."""

from __future__ import annotations

import copy

import eagerpy as ep
from foolbox.distances import Distance, linf
from foolbox.models import Model

from ..core.graphs import check_cuda_graphs
from ..core.keywords import takes_params
from ..core.params import PROX_STEPS
from ..core.prox_params import ProxParams
from ..core.prox_solver import alma_prox_solve
from ..core.restarts import check_restarts
from ..core.validation import check_flag, check_positive_int
from ._base import Batch, MinimalAttack
from ._common import model_function, success_fn
from .distances import WithinSegment

__all__ = ["LinfALMAProx"]


class LinfALMAProx(MinimalAttack):
    """ALMA prox: minimal ℓ∞ adversarial perturbations by proximal splitting. [#Rony23]_

    Minimises ‖δ‖∞ subject to misclassification (DLR⁺ < 0) with an Augmented Lagrangian
    penalty (modified P2, eq. 5.9) handled by gradient steps with an Adam-like diagonal metric
    and the exact prox of λ‖·‖∞ + ι_Λ (eq. 5.14; Algorithm 5.1 with ``prox_precision``) for the
    non-smooth norm and the box Λ = ``model.bounds`` (variable-metric forward-backward,
    eq. 5.17–5.18). One forward and one backward model propagation per step; the criterion
    object judges success (best tracking), so targeted (``TargetedMisclassification``) and
    untargeted attacks are supported.
    Hyperparameters live in the [0, 1]-normalised input space, so they hold for any bounds.

    Args:
        steps : Number of iterations N. The thesis' defaults are tuned for 500 (§5.5.5.3).
        seed : Seed of the random starts of ``restarts`` > 1 (one run draws nothing).
        cuda_graphs : as :class:`L2ALMA`.
        params : A :class:`~alma_plugin.ProxParams`, whose fields the keywords below replace.
        **hyperparameters : Every field of :class:`~alma_plugin.ProxParams` (``init_lr``,
            ``lr_reduction``, ``alpha``, ``rho_init``, ``gamma``, ``scale_rate``, ...), with
            the defaults ``inspect.signature(LinfALMAProx)`` shows.

    The thesis' λ⁽⁰⁾ = 10⁻³ (§5.5.5.3) was chosen for segmentation, where minimal norms are
    ≈ 0.3/255; classification norms are ~100× larger, so ``init_lr=None`` takes
    ``PROX_INIT_LR["classification"]`` (0.2). Pass a smaller ``init_lr`` for models whose
    minimal ℓ∞ norms are far below 0.1 (e.g. ImageNet, where they are ≈ 1/255).
    ``smooth_max=None`` takes κ = ``PROX_SMOOTH_MAX["classification"]`` (0.1): the step descends
    DLR⁺ with its max over the other classes smoothed (not in the thesis; DLR⁺'s value and
    success are unchanged); ``smooth_max=0`` is the thesis' gradient.

    Foolbox conventions:
        * ``early_stop`` (Foolbox passes ``min(epsilons)`` when no epsilon is None; raw units
          of ``model.bounds``, as ``fb.distances.linf``) ends the run once every sample has an
          adversarial with ‖δ‖∞ below it; 0 is accepted and never triggers. Negative or NaN
          epsilons are a ValueError naming ``epsilons``, whether or not a None is next to them.
        * Immutable: calling or running the attack never changes it; ``repr`` lists the
          constructor's arguments (the merged ``ProxParams``), stable across processes.
        * ``.repeat(n)``: ALMA prox is deterministic given ``seed`` (only ``restarts`` > 1
          draws random starts), so ``attack.repeat(n)`` runs the same attack n times at n
          times the cost and returns exactly the single-call result, as for Foolbox's DDN and
          FMN. For random starts within one budget, use ``restarts``.
        * Labels: a tensor, NumPy array or list of any integer dtype, or a
          ``Misclassification`` / ``TargetedMisclassification`` holding one. float16 and
          bfloat16 models are called in their dtype; the attack computes in float32.

    References:
        .. [#Rony23] Jérôme Rony, Jean-Christophe Pesquet, Ismail Ben Ayed, "Proximal Splitting
            Adversarial Attack for Semantic Segmentation", CVPR 2023,
            https://arxiv.org/abs/2206.07179
    """

    distance: Distance = linf

    @takes_params(ProxParams)
    def __init__(
        self,
        *,
        steps: int = PROX_STEPS,
        seed: int = 0,
        cuda_graphs: bool = False,
        params: ProxParams | None = None,
    ) -> None:
        assert params is not None
        self.steps = check_positive_int("steps", steps)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.cuda_graphs = check_flag("cuda_graphs", cuda_graphs)
        self.params = params
        check_restarts(self.steps, params.restarts)

    def __repr__(self) -> str:
        graphs = ", cuda_graphs=True" if self.cuda_graphs else ""
        return (
            f"{type(self).__name__}(steps={self.steps}, seed={self.seed}{graphs}, "
            f"params={self.params})"
        )

    def for_model(self, model: Model) -> LinfALMAProx:
        """A copy whose :attr:`distance` clips within segments (:class:`.WithinSegment`), so
        that Foolbox's clipped outputs stay inside ``model.bounds``; this attack is left
        unchanged (its ``distance`` stays ``fb.distances.linf``)."""
        bound = copy.copy(self)
        bound.distance = WithinSegment(linf)
        return bound

    def solve(self, batch: Batch) -> ep.Tensor:
        """ALMA prox on a checked batch; ``early_stop`` in raw units of ``model.bounds`` (‖δ‖∞
        scales linearly with the range; the solver works in [0, 1])."""
        span = batch.bounds[1] - batch.bounds[0]
        stop = None if batch.early_stop is None else batch.early_stop / span
        result = alma_prox_solve(
            model_function(batch.model),
            batch.inputs,
            batch.classes,
            bounds=batch.bounds,
            targeted=batch.targeted,
            steps=self.steps,
            is_adversarial=success_fn(batch.criterion),
            params=self.params.for_task("classification"),
            early_stop=stop,
            seed=self.seed,
            cuda_graphs=check_cuda_graphs(self.cuda_graphs, batch.inputs),
        )
        return result.adversarials
