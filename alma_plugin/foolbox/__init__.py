"""Foolbox 3 drop-ins for ALMA and ALMA prox.

* ALMA (Rony, Granger, Pedersoli & Ben Ayed, "Augmented Lagrangian Adversarial Attacks",
  ICCV 2021): :class:`L1ALMA`, :class:`L2ALMA` and the perceptual :class:`CIEDE2000ALMA`,
  :class:`SSIMALMA`, :class:`MSSSIMALMA`, :class:`LPIPSALMA` (with :class:`NormalisedDistance`,
  a Foolbox distance whose ``clip_perturbation`` really clips);
* ALMA prox (Rony, Pesquet & Ben Ayed, CVPR 2023): :class:`LinfALMAProx`, minimal ℓ∞.

Each attack is a :class:`foolbox.attacks.base.MinimizationAttack`, so ``epsilons`` (None, a
float or a list), ``early_stop`` and ``.repeat(n)`` go through Foolbox's own base class; the
algorithms live in :mod:`alma_plugin.core`.

Example:
    >>> import foolbox as fb
    >>> from alma_plugin.foolbox import L2ALMA
    >>> fmodel = fb.PyTorchModel(net.eval(), bounds=(0, 1), device=images.device)  # doctest: +SKIP
    >>> raw, clipped, success = L2ALMA(steps=100)(fmodel, images, labels, epsilons=[0.5, 1.0])
    ... # doctest: +SKIP
"""

from .alma import L1ALMA, L2ALMA, ALMAAttack
from .distances import NormalisedDistance, WithinSegment
from .perceptual import CIEDE2000ALMA, LPIPSALMA, MSSSIMALMA, SSIMALMA
from .prox import LinfALMAProx

__all__ = [
    "ALMAAttack",
    "CIEDE2000ALMA",
    "L1ALMA",
    "L2ALMA",
    "LPIPSALMA",
    "LinfALMAProx",
    "MSSSIMALMA",
    "NormalisedDistance",
    "WithinSegment",
    "SSIMALMA",
]
