"""alma_plugin: the Augmented Lagrangian adversarial attacks (ALMA, ALMA prox) for Foolbox and
torchattacks, on a framework-neutral eagerpy core.

Rony, Granger, Pedersoli, Ben Ayed. "Augmented Lagrangian Adversarial Attacks", ICCV 2021.
"""

from .core.solver import StepInfo
from .functional import AttackResult, alma

__version__ = "0.1.0"

__all__ = ["AttackResult", "StepInfo", "alma", "__version__"]
