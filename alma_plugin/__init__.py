"""alma_plugin: the Augmented Lagrangian adversarial attacks (ALMA, ALMA prox) for Foolbox and
torchattacks, on a framework-neutral eagerpy core.

Rony, Granger, Pedersoli, Ben Ayed. "Augmented Lagrangian Adversarial Attacks", ICCV 2021.
Rony, Pesquet, Ben Ayed. "Proximal Splitting Adversarial Attack for Semantic Segmentation",
CVPR 2023.

The functional entry points are :func:`alma` and :func:`alma_prox`; the Foolbox attacks are in
:mod:`alma_plugin.foolbox`, the torchattacks ones in :mod:`alma_plugin.torchattacks`, the
distances in :mod:`alma_plugin.distances`, the embedded models and data in
:mod:`alma_plugin.zoo`.
"""

from .core.params import PROX_INIT_LR, ALMAParams, ProxParams, budget_alpha
from .core.result import AttackResult, StepInfo
from .core.validation import TrainingModeWarning
from .distances import DISTANCES, DistanceSpec
from .functional import alma, alma_prox

__version__ = "0.1.0"

__all__ = [
    "DISTANCES",
    "PROX_INIT_LR",
    "ALMAParams",
    "AttackResult",
    "DistanceSpec",
    "ProxParams",
    "StepInfo",
    "TrainingModeWarning",
    "__version__",
    "alma",
    "alma_prox",
    "budget_alpha",
]
