"""alma_plugin: the Augmented Lagrangian adversarial attacks (ALMA, ALMA prox) for Foolbox and
torchattacks, on a framework-neutral eagerpy core.

Rony, Granger, Pedersoli, Ben Ayed. "Augmented Lagrangian Adversarial Attacks", ICCV 2021.
Rony, Pesquet, Ben Ayed. "Proximal Splitting Adversarial Attack for Semantic Segmentation",
CVPR 2023.

Azizmalayeri, Rohban. "Lagrangian Objective Function Leads to Improved Unforeseen Attack
Generalization in Adversarial Training", 2021 (the training attack :func:`lagrangian`).

The functional entry points are :func:`alma`, :func:`alma_prox` and :func:`lagrangian`; the
Foolbox attacks are in :mod:`alma_plugin.foolbox`, the torchattacks ones in
:mod:`alma_plugin.torchattacks`, adversarial training in :mod:`alma_plugin.training`, the
distances in :mod:`alma_plugin.distances`, the embedded models and data in
:mod:`alma_plugin.zoo`.
"""

from .core.lagrangian import LagrangianParams, LagrangianResult
from .core.model_checks import ProbabilityOutputWarning, TrainingModeWarning
from .core.params import (
    CLASS_RESTARTS_FIRST_RUN_SHARE,
    CLASS_RESTARTS_MIN_CLASSES,
    CLASS_RESTARTS_MIN_STEPS,
    ALMAParams,
    budget_alpha,
)
from .core.precision import ReducedPrecisionWarning
from .core.prox_params import PROX_INIT_LR, PROX_RHO_INIT, PROX_SMOOTH_MAX, ProxParams
from .core.result import AttackResult, StepInfo
from .distances import DISTANCES, DistanceSpec
from .functional import alma, alma_prox, lagrangian

__version__ = "0.1.0"

__all__ = [
    "CLASS_RESTARTS_FIRST_RUN_SHARE",
    "CLASS_RESTARTS_MIN_CLASSES",
    "CLASS_RESTARTS_MIN_STEPS",
    "DISTANCES",
    "PROX_INIT_LR",
    "PROX_RHO_INIT",
    "PROX_SMOOTH_MAX",
    "ALMAParams",
    "AttackResult",
    "DistanceSpec",
    "LagrangianParams",
    "LagrangianResult",
    "ProbabilityOutputWarning",
    "ProxParams",
    "ReducedPrecisionWarning",
    "StepInfo",
    "TrainingModeWarning",
    "__version__",
    "alma",
    "alma_prox",
    "budget_alpha",
    "lagrangian",
]
