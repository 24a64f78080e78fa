"""torchattacks drop-ins: :class:`ALMA`, :class:`MinimalEnsemble` and :class:`Lagrangian`.

``ALMA`` is the Augmented Lagrangian attack of Rony, Granger, Pedersoli and Ben Ayed,
"Augmented Lagrangian Adversarial Attacks", ICCV 2021 (Algorithm 2 with the modifications of
§3.2) for ℓ1, ℓ2 and the perceptual distances, and ALMA prox (Rony, Pesquet and Ben Ayed,
CVPR 2023) for ℓ∞, as a :class:`torchattacks.attack.Attack`: usable alone, inside
:class:`torchattacks.MultiAttack`, with ``set_normalization_used``, the targeted modes and
``save()``. The algorithms live in :mod:`alma_plugin.core`.

``MinimalEnsemble`` runs several attacks on the same batch and keeps, per sample, the
successful output with the smallest distance, which is what an evaluation of *minimal*
attacks needs (``MultiAttack`` keeps the first success instead).

``Lagrangian`` is the training attack of Azizmalayeri and Rohban (2021, Algorithm 1): a few
steps of ascent on the C&W margin loss minus a fixed-schedule multiplier times ‖δ‖₂, for
adversarial training (:func:`alma_plugin.training.adversarial_training`).
"""

from .alma import ALMA
from .ensemble import MinimalEnsemble
from .lagrangian import Lagrangian

__all__ = ["ALMA", "Lagrangian", "MinimalEnsemble"]
