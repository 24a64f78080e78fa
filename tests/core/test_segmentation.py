"""ALMA prox for semantic segmentation on a tiny fully convolutional net trained on shapes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import eagerpy as ep
import pytest
import torch
from torch import nn

from alma_plugin import AttackResult, alma_prox
from tests.utils import fit_full_batch

# One intra-op thread: these tiny models run faster than with two contended threads.
pytestmark = pytest.mark.usefixtures("single_thread")


def make_shapes(n: int, seed: int, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images with a faint red disc (class 1), green square (2) and blue diamond (3).

    Four classes, so that tDLR⁺ has its K ≥ 4 denominator: with K = 3 it is identically 1
    (zero gradient) wherever the target is the smallest logit.
    """
    g = torch.Generator().manual_seed(seed)
    images = 0.49 + 0.02 * torch.rand(n, 3, size, size, generator=g)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        for c in (1, 2, 3):
            cy, cx = torch.randint(5, size - 5, (2,), generator=g).tolist()
            r = int(torch.randint(3, 6, (1,), generator=g))
            dy, dx = (yy - cy).abs(), (xx - cx).abs()
            region = [dy**2 + dx**2 <= r * r, (dy <= r) & (dx <= r), dy + dx <= r][c - 1]
            labels[i][region] = c
            images[i, c - 1][region] += 0.04
    return images, labels


class Standardise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 25


@pytest.fixture(scope="module")
def seg_net() -> nn.Module:
    """3×3 conv → tanh → 1×1 conv: receptive field 3×3, logits (N, 4, H, W)."""
    torch.manual_seed(0)
    images, labels = make_shapes(32, seed=0)
    model = nn.Sequential(
        Standardise(), nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, 4, 1)
    )
    return fit_full_batch(model, images, labels, steps=100, lr=2e-2)


@pytest.fixture(scope="module")
def scenes(seg_net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = make_shapes(6, seed=123)
    with torch.no_grad():
        assert (seg_net(images).argmax(1) == labels).float().mean() > 0.99
    return images, labels


def apsr(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
         targeted: bool) -> torch.Tensor:  # fmt: skip
    """Eq. 5.19 computed independently from the model's predictions."""
    with torch.no_grad():
        pred = model(images).argmax(1)
    hit = pred == labels if targeted else pred != labels
    return (hit & mask).flatten(1).sum(1) / mask.flatten(1).sum(1)


@pytest.mark.parametrize("targeted", [False, True])
def test_apsr_reaches_threshold(seg_net, scenes, targeted):
    images, labels = scenes
    goal = torch.zeros_like(labels) if targeted else labels  # targeted: erase every object
    before = images.clone(), goal.clone()
    result = alma_prox(seg_net, images, goal, targeted=targeted, steps=200)
    assert isinstance(result, AttackResult)
    adv = result.adversarials
    assert isinstance(adv, torch.Tensor) and adv.shape == images.shape
    assert torch.equal(images, before[0]) and torch.equal(goal, before[1])
    assert all(p.grad is None for p in seg_net.parameters())
    assert adv.min() >= 0 and adv.max() <= 1
    measured = apsr(seg_net, adv, goal, torch.ones_like(goal, dtype=torch.bool), targeted)
    print(f"targeted={targeted}: APSR {measured.tolist()}, linf {result.distances.tolist()}")
    assert result.success.all() and (measured >= 0.99).all()
    assert torch.allclose(result.apsr.float(), measured.float())
    assert torch.allclose(result.distances, (adv - images).flatten(1).abs().max(1).values)
    assert (result.distances > 0).all() and (result.distances < 0.05).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_model_is_fooled_as_the_float32_one(seg_net, scenes, dtype):
    """The segmentation step size λ⁽⁰⁾ = 10⁻³ is below half a bfloat16 ulp near 0.5 (2⁻⁹):
    the step goes on from δ itself, the rounded input is only what is judged. Before, δ was
    replaced by the rounded perturbation every step, and the bfloat16 model stalled (no
    scene fooled; ‖δ‖∞ stuck at 0.027 with 0.5 % of the pixels fooled)."""
    images, labels = scenes
    half = copy.deepcopy(seg_net).to(dtype)
    result = alma_prox(half, images.to(dtype), labels, steps=200)
    measured = apsr(half, result.adversarials, labels, torch.ones_like(labels, dtype=torch.bool),
                    targeted=False)  # fmt: skip
    assert result.success.sum() >= len(labels) - 1 and (measured[result.success] >= 0.99).all()
    assert (result.distances[result.success] < 0.06).all()


def test_masks_are_honoured(seg_net, scenes):
    images, labels = scenes
    width = images.shape[-1]
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[..., : width // 2] = True  # attack the left half only
    labels = labels.masked_fill(~mask, 255)  # unlabelled pixels may hold any value
    result = alma_prox(seg_net, images, labels, masks=mask, steps=200)
    assert result.success.all()
    measured = apsr(seg_net, result.adversarials, labels, mask, targeted=False)
    assert (measured >= 0.99).all() and torch.allclose(result.apsr.float(), measured.float())
    # pixels beyond the receptive field of the mask get no gradient: untouched, still correct
    far = slice(width // 2 + 2, None)
    assert torch.equal(result.adversarials[..., far], images[..., far])
    with torch.no_grad():
        pred = seg_net(result.adversarials).argmax(1)
    assert (pred[..., far] == scenes[1][..., far]).float().mean() > 0.99


def test_eagerpy_inputs_and_bounds(seg_net, scenes):
    images, labels = scenes[0][:2], scenes[1][:2]
    result = alma_prox(
        lambda x: seg_net(x / 255), ep.astensor(images * 255), ep.astensor(labels),
        steps=5, bounds=(0, 255),
    )  # fmt: skip
    assert isinstance(result.adversarials, ep.Tensor)
    assert result.adversarials.raw.min() >= 0 and result.adversarials.raw.max() <= 255
    # uint8 label maps and float64 images are accepted; results keep the images' dtype
    model64 = copy.deepcopy(seg_net).double()
    result = alma_prox(model64, images.double(), labels.to(torch.uint8), steps=3)
    assert result.adversarials.dtype == torch.float64 and result.apsr.shape == (2,)


def test_bad_inputs(seg_net, scenes):
    x, y = scenes[0][:2], scenes[1][:2]
    m = torch.ones_like(y, dtype=torch.bool)
    empty = m.clone()
    empty[1] = False
    cases = [
        (dict(inputs=x.numpy()), TypeError, "inputs must be a PyTorch, JAX or TensorFlow"),
        (dict(inputs=x[0]), ValueError, r"labels must have shape \(N,\) or \(N, H, W\)"),
        (dict(inputs=x + 1), ValueError, "within bounds"),
        (dict(inputs=x.masked_fill(x > 0.5, float("nan"))), ValueError, "NaN"),
        (dict(labels=y[:, :-1]), ValueError, r"labels must have shape \(N,\) or \(N, H, W\)"),
        (dict(labels=y.float()), TypeError, "labels must be an integer"),
        (dict(labels=y + 4), ValueError, r"labels must lie in \[0, 4\)"),
        (dict(masks=m[:, :-1]), ValueError, "masks must have the labels' shape"),
        (
            dict(masks=m.long() * 2),
            ValueError,
            r"0/1 \(or boolean\) values, got others \(largest in magnitude: 2\)",
        ),
        (dict(masks=empty), ValueError, r"at least one pixel per sample; empty: \[1\]"),
        (dict(steps=0), ValueError, "steps must be >= 1"),
        (dict(adv_threshold=0.0), ValueError, r"adv_threshold must lie in \(0, 1\]"),
        (dict(adv_threshold=1.5), ValueError, "adv_threshold"),
        (dict(init_lr=-1.0), ValueError, "init_lr"),
        (dict(model=3), TypeError, "model must be callable"),
        (dict(model=lambda z: seg_net(z)[..., :-1]), ValueError, r"model outputs must have shape"),
        (dict(model=lambda z: seg_net(z)[:, :1]), ValueError, r"K >= 2"),
        (dict(model=lambda z: seg_net(z).detach()), ValueError, r"differentiable"),
        (dict(model=lambda z: seg_net(z).tolist()), TypeError, r"model must return a Tensor"),
    ]
    for change, error, message in cases:
        kwargs = dict(model=seg_net, inputs=x, labels=y, steps=2)
        kwargs.update(change)
        with pytest.raises(error, match=message):
            alma_prox(kwargs.pop("model"), kwargs.pop("inputs"), kwargs.pop("labels"), **kwargs)


_MEASURE = """
import json, resource, sys, time
import torch
from torch import nn
from alma_plugin import alma_prox
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 5, 1)).eval()
images = torch.rand(1, 3, 512, 512)
with torch.no_grad():
    labels = model(images).argmax(1)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for steps in (2, 6):
    start = time.perf_counter()
    alma_prox(model, images, labels, steps=steps)
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"step_s": (times[1] - times[0]) / 4, "peak_mib": (peak - baseline) / 1024}))
"""


@pytest.mark.slow
def test_512x512_memory_and_step_time():
    """1×3×512×512 with a per-pixel 3×3-conv head, in a fresh process: peak resident memory
    added by the attack (ru_maxrss delta) and time per step (one thread)."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE], capture_output=True, text=True, check=True, timeout=300
    )
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"512x512: {numbers['step_s'] * 1e3:.0f} ms/step, peak +{numbers['peak_mib']:.0f} MiB")
    assert numbers["step_s"] < 5.0 and numbers["peak_mib"] < 1024


def test_requires_grad_images_keep_no_graph(seg_net, scenes):
    """Before: the result carried a graph through every step (≈10 MB per step)."""
    images, labels = scenes[0][:2].clone().requires_grad_(True), scenes[1][:2]
    result = alma_prox(seg_net, images, labels, steps=5)
    for tensor in (result.adversarials, result.distances, result.apsr):
        assert tensor.grad_fn is None and not tensor.requires_grad
    assert images.grad is None


def test_train_mode_warns(scenes):
    from alma_plugin.core.model_checks import TrainingModeWarning

    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout2d(0.1)).train()
    with pytest.warns(TrainingModeWarning):
        alma_prox(net, scenes[0][:1], scenes[1][:1].clamp(max=3), steps=2)
    assert net.training


@pytest.mark.parametrize("nu", [1e-9, 1e-11])
def test_a_tiny_threshold_still_needs_one_fooled_pixel(nu):
    """ν·‖m‖₁ ≤ 1e-9 rounded the pixels needed for success to 0 (success at APSR 0 < ν, at
    distance 0) and the masking percentile's rank to −1 (an index error mid-run)."""
    torch.manual_seed(0)
    net = nn.Conv2d(3, 4, 1).eval()
    for size in (1, 8):
        x = torch.rand(4, 3, size, size)
        with torch.no_grad():
            labels = net(x).argmax(1)
        result = alma_prox(net, x, labels, steps=20, adv_threshold=nu)
        with torch.no_grad():
            fooled = (net(result.adversarials).argmax(1) != labels).flatten(1).float().mean(1)
        assert (fooled[result.success] > 0).all()  # APSR ≥ ν > 0: at least one pixel
        assert torch.equal(
            result.distances[~result.success], torch.full_like(fooled, torch.inf)[~result.success]
        )
        assert (result.apsr >= nu)[result.success].all()
