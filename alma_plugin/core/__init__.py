"""Framework-neutral ALMA math on eagerpy tensors. Imports neither foolbox nor torchattacks."""

from .constraints import dlr_plus, is_satisfied
from .penalties import PENALTIES, Penalty, get_penalty
from .schedules import decayed_step_size, initial_step_size
from .solver import ALMAConfig, ALMAResult, StepInfo, alma_solve

__all__ = [
    "ALMAConfig",
    "ALMAResult",
    "PENALTIES",
    "Penalty",
    "StepInfo",
    "alma_solve",
    "decayed_step_size",
    "dlr_plus",
    "get_penalty",
    "initial_step_size",
    "is_satisfied",
]
