"""CIEDE2000 against published test data (Sharma, Wu & Dalal 2005) and scikit-image."""

from __future__ import annotations

import eagerpy as ep
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000, rgb2lab

from alma_plugin.distances import (
    CIEDE2000_INIT_LR_DISTANCE,
    DISTANCES,
    check_color_input,
    ciede2000,
)

# White-box checks of the package's own internals (per-pixel ΔE₀₀, RGB → CIELAB, constants).
from alma_plugin.distances import _color  # isort: skip
from alma_plugin.distances._color import ciede2000_lab, rgb_to_lab

# Table 1 of G. Sharma, W. Wu, E. N. Dalal, "The CIEDE2000 color-difference formula:
# implementation notes, supplementary test data, and mathematical observations",
# Color Res. Appl. 30(1):21-30, 2005. Columns: L1 a1 b1 L2 a2 b2 ΔE00.
SHARMA_TABLE_1 = """
50.0000   2.6772 -79.7751  50.0000   0.0000 -82.7485  2.0425
50.0000   3.1571 -77.2803  50.0000   0.0000 -82.7485  2.8615
50.0000   2.8361 -74.0200  50.0000   0.0000 -82.7485  3.4412
50.0000  -1.3802 -84.2814  50.0000   0.0000 -82.7485  1.0000
50.0000  -1.1848 -84.8006  50.0000   0.0000 -82.7485  1.0000
50.0000  -0.9009 -85.5211  50.0000   0.0000 -82.7485  1.0000
50.0000   0.0000   0.0000  50.0000  -1.0000   2.0000  2.3669
50.0000  -1.0000   2.0000  50.0000   0.0000   0.0000  2.3669
50.0000   2.4900  -0.0010  50.0000  -2.4900   0.0009  7.1792
50.0000   2.4900  -0.0010  50.0000  -2.4900   0.0010  7.1792
50.0000   2.4900  -0.0010  50.0000  -2.4900   0.0011  7.2195
50.0000   2.4900  -0.0010  50.0000  -2.4900   0.0012  7.2195
50.0000  -0.0010   2.4900  50.0000   0.0009  -2.4900  4.8045
50.0000  -0.0010   2.4900  50.0000   0.0010  -2.4900  4.8045
50.0000  -0.0010   2.4900  50.0000   0.0011  -2.4900  4.7461
50.0000   2.5000   0.0000  50.0000   0.0000  -2.5000  4.3065
50.0000   2.5000   0.0000  73.0000  25.0000 -18.0000 27.1492
50.0000   2.5000   0.0000  61.0000  -5.0000  29.0000 22.8977
50.0000   2.5000   0.0000  56.0000 -27.0000  -3.0000 31.9030
50.0000   2.5000   0.0000  58.0000  24.0000  15.0000 19.4535
50.0000   2.5000   0.0000  50.0000   3.1736   0.5854  1.0000
50.0000   2.5000   0.0000  50.0000   3.2972   0.0000  1.0000
50.0000   2.5000   0.0000  50.0000   1.8634   0.5757  1.0000
50.0000   2.5000   0.0000  50.0000   3.2592   0.3350  1.0000
60.2574 -34.0099  36.2677  60.4626 -34.1751  39.4387  1.2644
63.0109 -31.0961  -5.8663  62.8187 -29.7946  -4.0864  1.2630
61.2901   3.7196  -5.3901  61.4292   2.2480  -4.9620  1.8731
35.0831 -44.1164   3.7933  35.0232 -40.0716   1.5901  1.8645
22.7233  20.0904 -46.6940  23.0331  14.9730 -42.5619  2.0373
36.4612  47.8580  18.3852  36.2715  50.5065  21.2231  1.4146
90.8027  -2.0831   1.4410  91.1528  -1.6435   0.0447  1.4441
90.9257  -0.5406  -0.9208  88.6381  -0.8985  -0.7239  1.5381
 6.7747  -0.2908  -2.4247   5.8714  -0.0985  -2.2286  0.6377
 2.0776   0.0795  -1.1350   0.9033  -0.0636  -0.5514  0.9082
"""


def _sharma() -> np.ndarray:
    rows = [[float(v) for v in line.split()] for line in SHARMA_TABLE_1.strip().splitlines()]
    table = np.array(rows)
    assert table.shape == (34, 7)
    return table


def _t(array: np.ndarray, dtype: torch.dtype = torch.float64) -> ep.Tensor:
    return ep.astensor(torch.as_tensor(array, dtype=dtype))


def _skimage_accumulated(x_adv: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = []
    for a, b in zip(x_adv, x, strict=True):
        delta = deltaE_ciede2000(rgb2lab(a.transpose(1, 2, 0)), rgb2lab(b.transpose(1, 2, 0)))
        out.append(np.sqrt(np.sum(delta**2)))
    return np.array(out)


def _pair(seed: int, size: float, shape: tuple[int, ...] = (4, 3, 16, 16)) -> tuple:
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    x_adv = np.clip(x + rng.uniform(-size, size, shape), 0, 1)
    return x_adv, x


@pytest.mark.parametrize("order", ["forward", "swapped"])
def test_sharma_table_1(order: str) -> None:
    table = _sharma()
    lab1, lab2 = table[:, 0:3], table[:, 3:6]
    if order == "swapped":
        lab1, lab2 = lab2, lab1
    ours = ciede2000_lab(_t(lab1), _t(lab2)).raw.numpy()
    error = np.abs(ours - table[:, 6])
    assert error.max() < 1e-4, (error.max(), int(error.argmax()))


def test_sharma_table_1_numpy_backend() -> None:
    table = _sharma()
    lab1, lab2 = ep.astensor(table[:, 0:3]), ep.astensor(table[:, 3:6])
    ours = ciede2000_lab(lab1, lab2).numpy()
    assert np.abs(ours - table[:, 6]).max() < 1e-4


def test_white_and_black_lab() -> None:
    rgb = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 3, 1, 1)
    lab = rgb_to_lab(ep.astensor(rgb)).raw[:, :, 0, 0].numpy()
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=1e-6)
    reference = rgb2lab(np.full((1, 1, 3), 0.5))[0, 0]
    np.testing.assert_allclose(lab[2], reference, atol=1e-2)


def test_rgb_to_lab_matches_skimage() -> None:
    x = np.random.default_rng(0).random((2, 3, 8, 8))
    ours = rgb_to_lab(_t(x)).raw.numpy()
    reference = np.stack([rgb2lab(a.transpose(1, 2, 0)).transpose(2, 0, 1) for a in x])
    # scikit-image rounds the RGB→XYZ matrix to 6 digits, the paper's has 7.
    assert np.abs(ours - reference).max() < 1e-2


@pytest.mark.parametrize("size", [1 / 255, 4 / 255, 16 / 255])
def test_matches_skimage_accumulated(size: float) -> None:
    x_adv, x = _pair(1, size)
    reference = _skimage_accumulated(x_adv, x)
    ours = ciede2000(_t(x_adv), _t(x)).raw.numpy()
    assert ours.shape == (4,)
    # The RGB→XYZ constants differ in the 7th digit (paper: 7 digits, scikit-image: 6), which
    # moves the accumulated value by up to ~1.5e-5 relative; see the test with its constants.
    np.testing.assert_allclose(ours, reference, rtol=3e-5)
    ours32 = ciede2000(_t(x_adv, torch.float32), _t(x, torch.float32)).raw.numpy()
    np.testing.assert_allclose(ours32, reference, rtol=1e-4)


@pytest.mark.parametrize("size", [1 / 255, 16 / 255, 0.5])
def test_matches_skimage_per_pixel(size: float) -> None:
    x_adv, x = _pair(3, size)
    ours = ciede2000_lab(rgb_to_lab(_t(x_adv)), rgb_to_lab(_t(x))).raw.numpy()
    reference = np.stack(
        [
            deltaE_ciede2000(rgb2lab(a.transpose(1, 2, 0)), rgb2lab(b.transpose(1, 2, 0)))
            for a, b in zip(x_adv, x, strict=True)
        ]
    )
    assert ours.shape == reference.shape == (4, 16, 16)
    # Same constants caveat as above: up to ~6e-3 on single pixels at the largest size.
    assert np.abs(ours - reference).max() < 1e-2
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-4)


def test_matches_skimage_to_1e_4_with_its_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    """With scikit-image's 6-digit matrix and white, the accumulated values agree to 1e-4."""
    matrix = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169))
    matrix += ((0.019334, 0.119193, 0.950227),)
    monkeypatch.setattr(_color, "RGB_TO_XYZ", matrix)
    monkeypatch.setattr(_color, "WHITE_D65", (0.95047, 1.0, 1.08883))
    for size in (1 / 255, 16 / 255, 0.2, 0.5):
        x_adv, x = _pair(4, size)
        ours = ciede2000(_t(x_adv), _t(x)).raw.numpy()
        assert np.abs(ours - _skimage_accumulated(x_adv, x)).max() < 1e-4
        per_pixel = ciede2000_lab(rgb_to_lab(_t(x_adv)), rgb_to_lab(_t(x))).raw.numpy()
        reference = np.stack(
            [
                deltaE_ciede2000(rgb2lab(a.transpose(1, 2, 0)), rgb2lab(b.transpose(1, 2, 0)))
                for a, b in zip(x_adv, x, strict=True)
            ]
        )
        # Typically 1e-14; dark pixels differ by up to ~1e-4 because scikit-image also rounds
        # the linear branch of f (7.787 t + 16/116 for t ≤ 0.008856, eq. 15 exactly: t/3δ²).
        assert np.abs(per_pixel - reference).max() < 1e-3
        assert np.median(np.abs(per_pixel - reference)) < 1e-10


def test_symmetric_and_per_sample() -> None:
    x_adv, x = _pair(2, 0.1)
    forward = ciede2000(_t(x_adv), _t(x)).raw.numpy()
    backward = ciede2000(_t(x), _t(x_adv)).raw.numpy()
    np.testing.assert_allclose(forward, backward, rtol=1e-12)
    single = [ciede2000(_t(x_adv[i : i + 1]), _t(x[i : i + 1])).raw.item() for i in range(4)]
    np.testing.assert_allclose(forward, single, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["random", "grey", "black", "white"])
def test_zero_and_finite_gradient_at_identical_inputs(dtype: torch.dtype, kind: str) -> None:
    torch.manual_seed(0)
    if kind == "random":
        base = torch.rand(2, 3, 6, 6, dtype=dtype)
    else:
        base = torch.full(
            (2, 3, 6, 6), {"grey": 0.5, "black": 0.0, "white": 1.0}[kind], dtype=dtype
        )
    x_adv = base.clone().requires_grad_(True)
    x = base.clone().requires_grad_(True)
    value = ciede2000(ep.astensor(x_adv), ep.astensor(x)).raw
    assert torch.all(value == 0)
    value.sum().backward()
    assert x_adv.grad is not None and x.grad is not None
    assert torch.isfinite(x_adv.grad).all() and torch.isfinite(x.grad).all()


def _values_and_gradient(
    backend: str, x_adv: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """ciede2000(x_adv, x) per sample and ∇ₓ̃ Σ of it, with x a constant as in an attack."""
    if backend == "numpy":
        return np.asarray(ciede2000(x_adv, x)), None
    if backend == "torch":
        a = torch.tensor(x_adv, requires_grad=True)
        value = ciede2000(a, torch.tensor(x))
        (grad,) = torch.autograd.grad(value.sum(), a)
        return value.detach().numpy(), grad.numpy()
    c = jnp.asarray(x)
    values, grad = (  # op by op, and compiled by XLA (x a constant folded into the program)
        (lambda a: ciede2000(a, c), jax.grad(lambda a: ciede2000(a, c).sum()))
        if backend == "jax"
        else (
            jax.jit(lambda a: ciede2000(a, c)),
            jax.jit(jax.grad(lambda a: ciede2000(a, c).sum())),
        )
    )
    a = jnp.asarray(x_adv)
    return np.asarray(values(a)), np.asarray(grad(a))


# Under jax.jit, XLA rounded the colour conversion of x̃ (differentiated) and of x (constant)
# differently (~1 ulp of Lab): ciede2000(x, x) was 5e-5 with gradients up to 53 (op by op too),
# and ALMA-CIEDE2000 on JAX took a 20-200× smaller first step than on PyTorch.
@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "jax-jit"])
def test_identical_pixels_contribute_exactly_zero_on_every_backend(backend: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 8, 8)).astype(np.float32)
    x_adv = x.copy()
    x_adv[1, :, 2, 3] = rng.random(3)  # sample 1 differs in one pixel only
    values, grad = _values_and_gradient(backend, x_adv, x)
    assert values[0] == 0  # x̃ = x
    # sample 1: the ΔE₀₀ of its one changed pixel (the others add nothing)
    pixel = ciede2000_lab(rgb_to_lab(_t(x_adv[1:, :, 2:3, 3])), rgb_to_lab(_t(x[1:, :, 2:3, 3])))
    np.testing.assert_allclose(values[1], pixel.raw.item(), rtol=1e-4)
    if grad is not None:
        changed = np.zeros(x.shape, dtype=bool)
        changed[1, :, 2, 3] = True
        np.testing.assert_array_equal(grad[~changed], 0)
        assert np.isfinite(grad).all() and (grad[changed] != 0).all()


def test_finite_gradient_with_achromatic_pixels() -> None:
    x = torch.full((1, 3, 4, 4), 0.3, dtype=torch.float64)
    x_adv = (x + 0.01 * torch.randn(1, 3, 4, 4, dtype=torch.float64)).requires_grad_(True)
    ciede2000(ep.astensor(x_adv), ep.astensor(x)).raw.sum().backward()
    assert x_adv.grad is not None and torch.isfinite(x_adv.grad).all()
    assert x_adv.grad.abs().sum() > 0


def test_gradcheck() -> None:
    torch.manual_seed(0)
    x = 0.1 + 0.8 * torch.rand(2, 3, 3, 3, dtype=torch.float64)
    x_adv = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a: ciede2000(ep.astensor(a), ep.astensor(x)).raw, (x_adv,)
    )


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 4, 8, 8), (3, 8, 8), (2, 8, 8, 3)])
def test_non_rgb_input_raises(shape: tuple[int, ...]) -> None:
    bad = ep.astensor(torch.rand(*shape))
    with pytest.raises(ValueError, match=r"x_adv.*3.*got x_adv\.shape="):
        ciede2000(bad, bad)
    with pytest.raises(ValueError, match=r"'?images'? must|images must|must be a batch"):
        check_color_input(bad, "images")


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ciede2000(ep.astensor(torch.rand(2, 3, 8, 8)), ep.astensor(torch.rand(2, 3, 8, 9)))


def test_registry_entry() -> None:
    spec = DISTANCES["ciede2000"]
    assert spec.function is ciede2000
    assert spec.needs_color
    assert spec.init_lr_distance == CIEDE2000_INIT_LR_DISTANCE == 0.4
