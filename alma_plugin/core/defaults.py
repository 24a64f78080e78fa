"""The paper's defaults and the validated construction of an :class:`ALMAConfig`.

α follows the step budget (Appendix E): 0.5 for 100 steps or fewer, 0.9 for 1000 or more,
linear in log₁₀(steps) between. ε (``init_lr_distance``) follows the distance (Table 3).
RMSProp's decay and the momentum default to α, as in the authors' reference code.
"""

from __future__ import annotations

import math

from .penalties import get_penalty
from .solver import ALMAConfig
from .validation import check_in_range, check_positive_int


def default_alpha(steps: int) -> float:
    """α of eq. 9 for a budget of ``steps`` (Appendix E)."""
    position = (math.log10(max(steps, 1)) - 2.0) / (3.0 - 2.0)
    return 0.5 + 0.4 * min(max(position, 0.0), 1.0)


def make_config(
    *,
    steps: int,
    default_init_lr_distance: float,
    alpha: float | None = None,
    init_lr_distance: float | None | str = "default",
    penalty: str = "P2",
    lr_init: float = 0.1,
    lr_reduction: float = 0.01,
    mu_init: float = 1.0,
    rho_init: float = 1.0,
    mu_min: float = 1e-6,
    mu_max: float = 1e12,
    gamma: float = 1.2,
    tau: float = 0.95,
    check_steps: int = 10,
    rmsprop_decay: float | None = None,
    momentum: float | None = None,
    levels: int | None = None,
) -> ALMAConfig:
    """Validate every hyperparameter (clear errors naming the argument) and fill the defaults.

    ``init_lr_distance="default"`` takes the distance's ε from Table 3; None disables the
    initial step-size search and uses the constant ``lr_init``.
    """
    check_positive_int("steps", steps)
    if alpha is None:
        alpha = default_alpha(steps)
    check_in_range("alpha", alpha, 0.0, 1.0, open_high=True)
    if isinstance(init_lr_distance, str):
        if init_lr_distance != "default":
            raise ValueError(
                f"init_lr_distance must be a positive number, None or 'default', got "
                f"{init_lr_distance!r}"
            )
        init_lr_distance = default_init_lr_distance
    if init_lr_distance is not None:
        check_in_range(
            "init_lr_distance", init_lr_distance, 0.0, math.inf, open_low=True, open_high=True
        )
    check_in_range("lr_init", lr_init, 0.0, math.inf, open_low=True, open_high=True)
    check_in_range("lr_reduction", lr_reduction, 0.0, 1.0, open_low=True)
    check_in_range("mu_min", mu_min, 0.0, math.inf, open_low=True, open_high=True)
    check_in_range("mu_max", mu_max, mu_min, math.inf, open_high=True)
    check_in_range("mu_init", mu_init, mu_min, mu_max)
    check_in_range("rho_init", rho_init, 0.0, math.inf, open_low=True, open_high=True)
    check_in_range("gamma", gamma, 1.0, math.inf, open_high=True)
    check_in_range("tau", tau, 0.0, 1.0)
    check_positive_int("check_steps", check_steps)
    # The paper gives no values for RMSProp's decay and the momentum (§3.2.4); the authors'
    # reference implementation ties both to α, so they follow the budget like α does.
    rmsprop_decay = alpha if rmsprop_decay is None else rmsprop_decay
    momentum = alpha if momentum is None else momentum
    check_in_range("rmsprop_decay", rmsprop_decay, 0.0, 1.0, open_high=True)
    check_in_range("momentum", momentum, 0.0, 1.0, open_high=True)
    if levels is not None:
        check_positive_int("levels", levels, minimum=2)
    return ALMAConfig(
        penalty=get_penalty(penalty),
        alpha=float(alpha),
        init_lr_distance=None if init_lr_distance is None else float(init_lr_distance),
        lr_init=float(lr_init),
        lr_reduction=float(lr_reduction),
        mu_init=float(mu_init),
        rho_init=float(rho_init),
        mu_min=float(mu_min),
        mu_max=float(mu_max),
        gamma=float(gamma),
        tau=float(tau),
        check_steps=int(check_steps),
        rmsprop_decay=float(rmsprop_decay),
        momentum=float(momentum),
        levels=None if levels is None else int(levels),
    )
