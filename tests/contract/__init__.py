"""The contract every public entry point honours, as data: tiny models, one builder per entry
point, and ONE checker (:func:`check`) shared by the contract table (``test_contract.py``) and
the property-based tests (``test_properties.py``).

A row (:class:`Case`) builds a fresh :class:`Setup` — the caller's tensors, the model, the call —
and :func:`check` runs the call and asserts the invariants of :data:`INVARIANTS`: either a clear
``ValueError``/``TypeError`` whose message names the offending argument, or a result whose every
claimed success re-verifies on the returned tensor (and at least one is claimed, unless the row
says none is needed), is finite, lies in bounds, carries no graph,
and leaves the caller's tensors, the model and the attack object untouched.

The modules: :mod:`.core` (the invariants, expectations, rows, conversions), :mod:`.models`
(the caller's models, inputs, labels and device), :mod:`.entry_points`, :mod:`.hosts` and
:mod:`.distances` (one builder per entry point), :mod:`.checker` (the checker). Test files
import from here.
"""

from .checker import check
from .core import (
    HAS_JAX,
    HAS_TF,
    INVARIANTS,
    NO_SUCCESS_NEEDED,
    OK,
    Case,
    Expect,
    Returned,
    Setup,
    either,
    raises,
    to_numpy,
)
from .distances import distance_case
from .entry_points import alma_case, lagrangian_case, prox_case
from .hosts import foolbox_case, torchattacks_case
from .models import on_device

__all__ = [
    "HAS_JAX",
    "HAS_TF",
    "INVARIANTS",
    "NO_SUCCESS_NEEDED",
    "OK",
    "Case",
    "Expect",
    "Returned",
    "Setup",
    "alma_case",
    "check",
    "distance_case",
    "either",
    "foolbox_case",
    "lagrangian_case",
    "on_device",
    "prox_case",
    "raises",
    "to_numpy",
    "torchattacks_case",
]
