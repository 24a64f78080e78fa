"""What the state tests share: a tiny model that can raise or probe at chosen forwards, the batch,
every entry point as call(model), and snapshots of the model and of torch's process-wide state
(see test_exception_safety.py and test_rng_and_memory.py)."""

from __future__ import annotations

import os
import random
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import foolbox as fb
import numpy as np
import torch
from torch import nn

import alma_plugin as ap
from alma_plugin.foolbox import L2ALMA, SSIMALMA, LinfALMAProx
from alma_plugin.torchattacks import ALMA, Lagrangian, MinimalEnsemble

SIZE, CLASSES = 16, 5


class Tiny(nn.Module):
    """A linear classifier on (N, 3, 16, 16) images with two submodules (so per-module modes can
    differ) that raises ``error`` from its ``fail_at``-th forward on, and can run ``probe`` at
    chosen forwards (1-based)."""

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the global generator is the tests' subject
            torch.manual_seed(0)
            self.linear = nn.Linear(3 * SIZE * SIZE, CLASSES)
        self.body = nn.Sequential(nn.Flatten(), self.linear)  # the same module, once more
        self.head = nn.Identity()
        self.calls = 0
        self.fail_at, self.error = fail_at, error
        self.probe: Callable[[int], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.probe is not None:
            self.probe(self.calls)
        if self.fail_at is not None and self.calls >= self.fail_at:
            assert self.error is not None
            raise self.error
        return self.head(self.body(x))


def batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, SIZE, SIZE, generator=generator), torch.arange(n) % CLASSES


X, Y = batch()


def fmodel(model: nn.Module) -> fb.PyTorchModel:
    return fb.PyTorchModel(model, bounds=(0, 1), device="cpu")


#: Every entry point, as call(model) on X, Y; seeded wherever a seed exists.
ENTRIES: dict[str, Callable[[nn.Module], Any]] = {
    "alma-l2": lambda m: ap.alma(m, X, Y, steps=10),
    "alma-ssim": lambda m: ap.alma(m, X, Y, distance="ssim", steps=10),
    "alma-ciede2000": lambda m: ap.alma(m, X, Y, distance="ciede2000", steps=10),
    "alma-restarts": lambda m: ap.alma(m, X, Y, steps=10, restarts=2),
    "alma_prox": lambda m: ap.alma_prox(m, X, Y, steps=10),
    "lagrangian": lambda m: ap.lagrangian(m, X, Y, seed=0),
    "foolbox-L2ALMA": lambda m: L2ALMA(steps=10)(fmodel(m), X, Y, epsilons=None),
    "foolbox-LinfALMAProx": lambda m: LinfALMAProx(steps=10)(fmodel(m), X, Y, epsilons=None),
    "foolbox-SSIMALMA": lambda m: SSIMALMA(steps=10)(fmodel(m), X, Y, epsilons=None),
    "torchattacks-ALMA": lambda m: ALMA(m, "l2", steps=10)(X, Y),
    "torchattacks-ALMA-linf": lambda m: ALMA(m, "linf", steps=10)(X, Y),
    "torchattacks-Lagrangian": lambda m: Lagrangian(m, seed=0)(X, Y),
    "MinimalEnsemble": lambda m: MinimalEnsemble([ALMA(m, "l2", steps=5), ALMA(m, "l1", steps=5)])(
        X, Y
    ),
}


def numpy_global_state() -> tuple[Any, ...]:
    state: Any = np.random.get_state()  # noqa: NPY002 - NumPy's global generator is the subject
    return (state[1].tolist(), state[2])


def process_state() -> dict[str, Any]:
    """torch's process-wide settings, the global generators, warning filters and environment."""
    module = torch.nn.modules.module
    return {
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "threads": torch.get_num_threads(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn": (
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        ),
        "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "anomaly": torch.is_anomaly_enabled(),
        "warnings": list(warnings.filters),
        "environ": dict(os.environ),
        "torch_rng": torch.get_rng_state().tolist(),
        "numpy_rng": numpy_global_state(),
        "python_rng": random.getstate(),
        "global_hooks": (
            len(module._global_forward_hooks),
            len(module._global_forward_pre_hooks),
            len(module._global_backward_hooks),
        ),
    }


HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def model_state(model: nn.Module) -> dict[str, Any]:
    """Per module: the flag, hooks and attributes; per parameter: value, requires_grad and the
    .grad tensor itself with its values."""
    state: dict[str, Any] = {}
    for name, module in model.named_modules():
        state[f"{name}.training"] = module.training
        state[f"{name}.hooks"] = tuple(len(getattr(module, h)) for h in HOOKS)
        state[f"{name}.attributes"] = tuple(sorted(module.__dict__))
    for name, p in model.named_parameters():
        state[f"{name}.value"] = p.detach().clone()
        state[f"{name}.requires_grad"] = p.requires_grad
        state[f"{name}.grad_object"] = None if p.grad is None else id(p.grad)
        state[f"{name}.grad"] = None if p.grad is None else p.grad.clone()
    return state


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return torch.equal(a, b)
        return type(a) is type(b) and a == b

    return sorted(k for k in before.keys() | after.keys() if not same(before.get(k), after.get(k)))


def prepared(model: Tiny) -> Tiny:
    """Mixed per-module modes, a frozen parameter and an existing .grad on another."""
    model.eval()
    model.head.train()
    model.linear.weight.requires_grad_(False)
    model.linear.bias.grad = torch.full_like(model.linear.bias, 7.0)
    return model


def raised_from(error: BaseException, function: str) -> bool:
    return function in [frame.name for frame in traceback.extract_tb(error.__traceback__)]
