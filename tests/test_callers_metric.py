"""A caller's own perceptual metric as ``lpips=``, through every entry point that takes one.

The metric is written as a PyTorch user writes one (``torch.nn.functional``, ``Tensor.size``),
so it fails on anything but torch tensors. Before, ``alma()``, the Foolbox ``LPIPSALMA`` and
its ``distance`` handed it eagerpy tensors ("'PyTorchTensor' object has no attribute
'size'"), while ``MinimalEnsemble`` handed it torch tensors. Each entry point must now give it
torch tensors, descend it, and report its values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import foolbox as fb
import numpy as np
import pytest
import torch
from torch import nn

from alma_plugin import alma
from alma_plugin.foolbox import LPIPSALMA
from alma_plugin.torchattacks import ALMA, MinimalEnsemble

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 100


def torch_metric(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    assert isinstance(x_adv, torch.Tensor) and isinstance(x, torch.Tensor)
    per_pixel = nn.functional.mse_loss(x_adv, x, reduction="none")
    return per_pixel.reshape(x.size(0), -1).mean(1).sqrt()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5)).eval()


def _run_alma(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    result = alma(model, x, y, distance="lpips", lpips=torch_metric, steps=STEPS)
    assert torch.equal(result.distances, torch_metric(result.adversarials, x))  # reported
    return result.adversarials


def _run_foolbox(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    attack = LPIPSALMA(steps=STEPS, lpips=torch_metric)
    raw, _, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None)
    torch.testing.assert_close(attack.distance(x, raw), torch_metric(raw, x))  # its distance
    return raw


def _run_torchattacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ALMA(model, "lpips", steps=STEPS, lpips=torch_metric)(x, y)


def _run_ensemble(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    member = ALMA(model, "lpips", steps=STEPS, lpips=torch_metric)
    return MinimalEnsemble([member], distance="lpips", lpips=torch_metric)(x, y)


ENTRY_POINTS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]] = {
    "alma": _run_alma,
    "foolbox-LPIPSALMA": _run_foolbox,
    "torchattacks-ALMA": _run_torchattacks,
    "torchattacks-MinimalEnsemble": _run_ensemble,
}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_a_torch_metric_is_fed_torch_tensors_and_descended(entry_point: str) -> None:
    model = _model()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    adversarials = ENTRY_POINTS[entry_point](model, x, y)
    with torch.no_grad():
        fooled = model(adversarials).argmax(1) != y
    assert fooled.all()
    # descended, not merely measured: the metric is the RMS of the perturbation, whose minimum
    # over the fooling points of an affine model is the distance to the nearest hyperplane
    # (box-free: a lower bound), / √n
    weight = model[1].weight.detach()
    margins = (weight[y] - weight[:, None]).norm(dim=-1)  # (K, N)
    with torch.no_grad():
        logits = model(x)
    gaps = (logits.gather(1, y[:, None]).T - logits.T) / margins.clamp_min(1e-12)
    gaps[y, torch.arange(len(y))] = torch.inf
    optimum = gaps.min(0).values / x[0].numel() ** 0.5
    found = torch_metric(adversarials, x)
    assert (found >= optimum * (1 - 1e-4)).all() and (found <= 1.05 * optimum).all(), (
        found / optimum
    )


# --- JAX and TensorFlow: the package's LPIPS is a torch network; a caller's metric works ---


def _jax_linear() -> tuple[Any, Any, Any]:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    weight = jnp.asarray(np.random.default_rng(0).normal(size=(3 * 32 * 32, 5)), jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).random((4, 3, 32, 32)), jnp.float32)
    calls: list[int] = []

    def model(z: Any) -> Any:
        calls.append(1)
        return z.reshape(len(z), -1) @ weight * 0.01

    return model, x, calls


@pytest.mark.parametrize("lpips", [None, "package"], ids=["default", "LPIPS-instance"])
@pytest.mark.parametrize("entry_point", ["alma", "foolbox"])
def test_the_package_lpips_on_jax_is_refused_before_any_model_call(
    entry_point: str, lpips: str | None
) -> None:
    """It failed inside the first gradient step, after a model call, naming a JAX tracer."""
    from alma_plugin.distances import LPIPS, LPIPS_CHANNELS, AlexNetFeatures

    model, x, calls = _jax_linear()
    network = None
    if lpips == "package":
        linear = {
            f"lin{k}.model.1.weight": torch.ones(1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)
        }
        network = LPIPS(AlexNetFeatures().state_dict(), linear)
    labels = np.asarray(model(x)).argmax(1)
    calls.clear()
    message = r"lpips=None or an alma_plugin.distances.LPIPS needs PyTorch inputs.*jax"
    with pytest.raises(TypeError, match=message):
        if entry_point == "alma":
            alma(model, x, labels, distance="lpips", lpips=network, steps=2)
        else:
            fmodel = fb.JAXModel(model, bounds=(0, 1), data_format="channels_first")
            LPIPSALMA(steps=2, lpips=network)(fmodel, x, labels, epsilons=None)
    assert not calls


def test_a_jax_metric_is_fed_jax_arrays() -> None:
    jax = pytest.importorskip("jax")
    model, x, _ = _jax_linear()
    labels = np.asarray(model(x)).argmax(1)

    def jax_metric(x_adv: Any, reference: Any) -> Any:
        assert isinstance(x_adv, jax.Array)
        return jax.numpy.sqrt(((x_adv - reference) ** 2).reshape(len(x_adv), -1).mean(1))

    result = alma(model, x, labels, distance="lpips", lpips=jax_metric, steps=60)
    assert result.success.all()
    np.testing.assert_array_equal(np.asarray(result.distances),
                                  np.asarray(jax_metric(result.adversarials, x)))  # fmt: skip
