"""Framework-neutral ALMA and ALMA prox math on eagerpy tensors. Imports neither foolbox nor
torchattacks."""

from .constraints import dlr_plus, is_satisfied
from .params import ALMAParams, budget_alpha
from .penalties import PENALTIES, Penalty, get_penalty
from .prox_params import ProxParams
from .prox_solver import alma_prox_solve
from .result import AttackResult, StepInfo
from .schedules import decayed_step_size, initial_step_size
from .solver import alma_solve

__all__ = [
    "ALMAParams",
    "AttackResult",
    "PENALTIES",
    "Penalty",
    "ProxParams",
    "StepInfo",
    "alma_prox_solve",
    "alma_solve",
    "budget_alpha",
    "decayed_step_size",
    "dlr_plus",
    "get_penalty",
    "initial_step_size",
    "is_satisfied",
]
