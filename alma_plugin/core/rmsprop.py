"""Step 9 of Algorithm 2: the RMSProp step with momentum, projected on the box [0, 1].

    v ← β v + (1 − β) g²          (the squared-gradient average; v⁽⁰⁾ = 1, §3.2.4)
    m ← α m + g / (√v + ε)        (momentum)
    x̃ ← P_[0,1](x̃ − η m)          (η per sample)

Every quantity is the size of the input, so on PyTorch the step is written with fused
operators (``addcmul``, ``addcdiv``): 8 passes over the batch instead of 13, each a
separate kernel launch and allocation, every step. The results agree with the generic form to
rounding (``tests/core/test_rmsprop.py``); the arguments are never modified.
"""

from __future__ import annotations

import eagerpy as ep

from .tensors import expand

#: ε of the RMSProp denominator.
RMS_EPSILON = 1e-8


def rmsprop_step(
    x_adv: ep.Tensor,
    grad: ep.Tensor,
    square_avg: ep.Tensor,
    velocity: ep.Tensor,
    step_size: ep.Tensor,
    decay: float,
    momentum: float,
) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
    """One projected RMSProp + momentum step; returns the new ``(x̃, v, m)``.

    ``x_adv``, ``grad``, ``square_avg`` and ``velocity`` share one shape (N, ...) and lie in
    the normalised space [0, 1]; ``step_size`` is η per sample, shape (N,); ``decay`` is β and
    ``momentum`` α."""
    if isinstance(x_adv, ep.PyTorchTensor):
        import torch

        g = grad.raw
        average = torch.addcmul(square_avg.raw * decay, g, g, value=1 - decay)
        moment = torch.addcdiv(velocity.raw * momentum, g, average.sqrt().add_(RMS_EPSILON))
        stepped = torch.addcmul(x_adv.raw, expand(step_size, x_adv).raw, moment, value=-1)
        return ep.astensor(stepped.clamp_(0, 1)), ep.astensor(average), ep.astensor(moment)
    v = decay * square_avg + (1 - decay) * grad.square()
    m = momentum * velocity + grad / (v.sqrt() + RMS_EPSILON)
    return (x_adv - expand(step_size, x_adv) * m).clip(0, 1), v, m
