"""The contract every public distance follows, as a table: distance × backend × case.

Rows: every public distance of :mod:`alma_plugin.distances` (``lpips`` as an ``LPIPS``
instance with seeded random weights, the registry's default weights may be absent) × backend
(PyTorch, JAX, and TensorFlow where it is installed: the ``tf`` extra, which CI installs) ×
case. LPIPS is PyTorch-only: on the others every case must raise a clear ``TypeError``. Cases:

* ``raw``: raw tensors in → the same raw type out, shape (N,), float32;
* ``eagerpy``: eagerpy tensors in → the same eagerpy type out;
* ``identical``: D(x, x) = 0;
* ``nonfinite``: a NaN / +Inf / −Inf in one sample of ``x_adv`` or ``x`` → NaN for that sample
  only, the other samples unchanged;
* ``empty``: N = 0 → shape (0,);
* ``gradient``: the gradient at x̃ = x is finite (and, for ℓp, exactly 0);
* ``dtype-*``: every float dtype torch offers (float16, bfloat16, float32, float64; float64 not
  on JAX without x64) matches the float64 value of the same (rounded) inputs, and the result is
  float32 for 16-bit inputs, the input dtype otherwise.

Plus the bad-input errors, NumPy arrays, the ℓ1 / ℓ2 sub-gradients at zero on both
backends (``jax.grad(jnp.abs)(0.)`` is 1, which made ℓ1 attacks weak on JAX), and the
function ALMA's loop calls without the contract (``_common.unchecked``): the same values and
gradients on finite inputs, on both backends.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from alma_plugin import distances
from alma_plugin.distances import LPIPS
from alma_plugin.distances._common import finite_rows, unchecked
from tests.distances.test_lpips import _random_backbone, _random_linear

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ("l1", "l2", "linf", "ciede2000", "ssim", "msssim", "lpips")
SIDE = {"msssim": 176, "lpips": 32}  # smallest sizes those distances accept; 12 otherwise
# one batch shape for every case, that of the other JAX tests' 12×12 RGB images (the contract
# table's distance rows, the JAX Foolbox tests): JAX compiles each operation once per shape
N = 4
TORCH_DTYPES = ("float16", "bfloat16", "float32", "float64")
JAX_DTYPES = ("float16", "bfloat16", "float32")


@functools.lru_cache(maxsize=1)
def _lpips_random() -> LPIPS:
    return LPIPS(backbone_weights=_random_backbone(), linear_weights=_random_linear())


def _distance(name: str) -> Callable[[Any, Any], Any]:
    return _lpips_random() if name == "lpips" else getattr(distances, name)


@functools.cache
def _images(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x_adv, x) float64 arrays in [0, 1] of the size ``name`` needs."""
    side = SIDE.get(name, 12)
    rng = np.random.default_rng(0)
    x = rng.random((N, 3, side, side))
    x_adv = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1)
    return x_adv, x


class Torch:
    name = "torch"
    raw_type = torch.Tensor
    eager_type = ep.PyTorchTensor
    dtypes = TORCH_DTYPES

    @staticmethod
    def tensor(array: np.ndarray, dtype: str = "float32") -> torch.Tensor:
        return torch.as_tensor(array).to(getattr(torch, dtype))

    @staticmethod
    def numpy(t: Any) -> np.ndarray:
        return t.detach().double().numpy()

    @staticmethod
    def dtype_name(t: Any) -> str:
        return str(t.dtype).removeprefix("torch.")

    @staticmethod
    def grad(f: Callable[[Any, Any], Any], x_adv: Any, x: Any) -> np.ndarray:
        x_adv = x_adv.clone().requires_grad_(True)
        f(x_adv, x).sum().backward()
        assert x_adv.grad is not None
        return x_adv.grad.double().numpy()


class Jax:
    name = "jax"
    raw_type = jax.Array
    eager_type = ep.JAXTensor
    dtypes = JAX_DTYPES

    @staticmethod
    def tensor(array: np.ndarray, dtype: str = "float32") -> jax.Array:
        return jnp.asarray(array, dtype=getattr(jnp, dtype))

    @staticmethod
    def numpy(t: Any) -> np.ndarray:
        return np.asarray(t.astype(jnp.float32)).astype(np.float64)

    @staticmethod
    def dtype_name(t: Any) -> str:
        return str(t.dtype)

    @staticmethod
    def grad(f: Callable[[Any, Any], Any], x_adv: Any, x: Any) -> np.ndarray:
        # Compiled as one program: op-by-op, XLA would compile each of the gradient's
        # operations separately (several times slower for MS-SSIM and CIEDE2000).
        grad = jax.jit(jax.grad(lambda a, c: f(a, c).sum()))
        return np.asarray(grad(x_adv, x), dtype=np.float64)


class Tf:
    name = "tf"
    dtypes = ("float16", "bfloat16", "float32", "float64")

    @staticmethod
    def _tf() -> Any:
        import tensorflow as tf

        return tf

    @classmethod
    def tensor(cls, array: np.ndarray, dtype: str = "float32") -> Any:
        tf = cls._tf()
        return tf.cast(tf.constant(array, dtype=tf.float64), getattr(tf, dtype))

    @classmethod
    def numpy(cls, t: Any) -> np.ndarray:
        return cls._tf().cast(t, "float64").numpy()

    @staticmethod
    def dtype_name(t: Any) -> str:
        return str(t.dtype.name)

    @classmethod
    def grad(cls, f: Callable[[Any, Any], Any], x_adv: Any, x: Any) -> np.ndarray:
        tf = cls._tf()
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            total = tf.reduce_sum(f(x_adv, x))
        return cls.numpy(tape.gradient(total, x_adv))


BACKENDS: dict[str, Any] = {"torch": Torch, "jax": Jax}
if importlib.util.find_spec("tensorflow") is not None:  # the tf extra (installed by CI)
    import tensorflow as _tensorflow

    Tf.raw_type = _tensorflow.Tensor  # type: ignore[attr-defined]
    Tf.eager_type = ep.TensorFlowTensor  # type: ignore[attr-defined]
    BACKENDS["tf"] = Tf


# --- the cases: each takes (distance name, backend) and asserts -------------------------------


def case_raw(name: str, b: Any) -> None:
    x_adv, x = _images(name)
    out = _distance(name)(b.tensor(x_adv), b.tensor(x))
    assert isinstance(out, b.raw_type) and not isinstance(out, ep.Tensor)
    assert tuple(out.shape) == (N,) and b.dtype_name(out) == "float32"
    assert np.isfinite(b.numpy(out)).all() and (b.numpy(out) > 0).all()


def case_eagerpy(name: str, b: Any) -> None:
    x_adv, x = _images(name)
    raw = _distance(name)(b.tensor(x_adv), b.tensor(x))
    out = _distance(name)(ep.astensor(b.tensor(x_adv)), ep.astensor(b.tensor(x)))
    assert isinstance(out, b.eager_type) and tuple(out.shape) == (N,)
    np.testing.assert_array_equal(b.numpy(out.raw), b.numpy(raw))


def case_identical(name: str, b: Any) -> None:
    _, x = _images(name)
    out = b.numpy(_distance(name)(b.tensor(x), b.tensor(x)))
    assert (out == 0).all() and not np.signbit(out).any(), out  # +0 exactly, in every dtype


def case_nonfinite(name: str, b: Any) -> None:
    x_adv, x = _images(name)
    clean = b.numpy(_distance(name)(b.tensor(x_adv), b.tensor(x)))
    for where in ("x_adv", "x"):
        broken_adv, broken_x = x_adv.copy(), x.copy()
        target = broken_adv if where == "x_adv" else broken_x
        target[1, 0, 2, 3] = np.nan
        target[2, 1, 0, 0] = np.inf
        target[3, 2, 5, 1] = -np.inf
        out = b.numpy(_distance(name)(b.tensor(broken_adv), b.tensor(broken_x)))
        assert np.isnan(out[1:]).all(), (where, out)
        np.testing.assert_array_equal(out[0], clean[0])


def case_empty(name: str, b: Any) -> None:
    x_adv, x = _images(name)
    out = _distance(name)(b.tensor(x_adv[:0]), b.tensor(x[:0]))
    assert tuple(out.shape) == (0,)


def case_gradient(name: str, b: Any) -> None:
    _, x = _images(name)
    grad = b.grad(_distance(name), b.tensor(x), b.tensor(x))
    assert grad.shape == x.shape and np.isfinite(grad).all()
    if name in ("l1", "l2", "linf"):
        assert (grad == 0).all()


# float32 arithmetic on the same (rounded) inputs. LPIPS differences features of O(1) computed
# by a conv net: an absolute floor of float32 rounding. (1 − SSIM formed as 1 minus an index
# near 1 needed 2e-6, 1 − MS-SSIM 1e-5; formed from the moments of x̃ − x they need none.)
_ATOL32 = {"lpips": 1e-6}


def case_dtype(name: str, b: Any, dtype: str) -> None:
    x_adv, x = _images(name)
    inputs = b.tensor(x_adv, dtype), b.tensor(x, dtype)
    out = _distance(name)(*inputs)
    expected_dtype = "float64" if dtype == "float64" else "float32"
    assert b.dtype_name(out) == expected_dtype
    # Reference: float64 PyTorch on the very values the dtype holds (input rounding excluded).
    rounded = [Torch.tensor(b.numpy(t), "float64") for t in inputs]
    reference = Torch.numpy(_distance(name)(*rounded))
    if dtype == "float64":
        np.testing.assert_allclose(b.numpy(out), reference, rtol=1e-12, atol=1e-14)
    else:
        np.testing.assert_allclose(b.numpy(out), reference, rtol=2e-5, atol=_ATOL32.get(name, 0))


CASES: dict[str, Callable[..., None]] = {
    "raw": case_raw,
    "eagerpy": case_eagerpy,
    "identical": case_identical,
    "nonfinite": case_nonfinite,
    "empty": case_empty,
    "gradient": case_gradient,
}


# Op by op, XLA compiles each of MS-SSIM's ~250 operations (five scales of distinct shapes)
# for every new shape: ~15 s of compilation on one core for the JAX rows, marked slow.
def _marks(name: str, backend: str, case: str) -> list[Any]:
    return [pytest.mark.slow] if (name, backend) == ("msssim", "jax") else []


ROWS = [
    pytest.param(
        name,
        backend,
        case,
        dtype,
        id=f"{name}-{backend}-{case}{dtype and '-' + dtype}",
        marks=_marks(name, backend, case),
    )
    for name in NAMES
    for backend in BACKENDS
    for case, dtype in [(c, "") for c in CASES] + [("dtype", d) for d in BACKENDS[backend].dtypes]  # type: ignore[attr-defined]
]


@pytest.mark.parametrize(("name", "backend", "case", "dtype"), ROWS)
def test_contract(name: str, backend: str, case: str, dtype: str) -> None:
    b = BACKENDS[backend]
    run = (
        (lambda: case_dtype(name, b, dtype)) if case == "dtype" else (lambda: CASES[case](name, b))
    )
    if name == "lpips" and backend != "torch":
        module = {"jax": "jax", "tf": "tensorflow"}[backend]  # the error names the type given
        with pytest.raises(TypeError, match=rf"LPIPS needs PyTorch tensors.*{module}"):
            run()
        return
    run()


def test_table_covers_every_public_distance() -> None:
    helpers = {"get_distance", "check_color_input", "ms_ssim_min_size"}
    public = {n for n in distances.__all__ if n.islower() and n not in helpers}
    assert public == set(NAMES)
    assert set(distances.DISTANCES) == set(NAMES) - {"linf"}  # ℓ∞ is ALMA prox's
    for spec in distances.DISTANCES.values():
        assert spec.function is getattr(distances, spec.name)


def test_registry_lpips_refuses_jax_before_looking_for_weights() -> None:
    x = jnp.zeros((1, 3, 32, 32))
    with pytest.raises(TypeError, match="LPIPS needs PyTorch tensors"):
        distances.lpips(x, x)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_names_the_argument(name: str) -> None:
    f = _distance(name)
    x_adv, x = (torch.as_tensor(a, dtype=torch.float32) for a in _images(name))
    with pytest.raises(ValueError, match=r"same shape.*x_adv\.shape=\(4, .*x\.shape=\(2, "):
        f(x_adv, x[:2])
    with pytest.raises(TypeError, match=r"x must have a floating-point dtype.*int64"):
        f(x_adv, (x * 255).long())
    with pytest.raises(TypeError, match=r"x_adv must have a floating-point dtype.*uint8"):
        f((x_adv * 255).to(torch.uint8), x)
    with pytest.raises(TypeError, match=r"x_adv must be a tensor .*got builtins\.list"):
        f(x_adv.tolist(), x)
    # wider or narrower floats than the four measured: refused, not computed in float32
    # (NumPy's float128 was read as a 16-bit dtype; float8 promoted)
    wide = x_adv.numpy().astype(np.longdouble)
    if wide.dtype.itemsize > 8:  # long double is float64 on some platforms
        with pytest.raises(TypeError, match=r"x_adv must have a floating-point dtype.*float128"):
            f(wide, wide)
    with pytest.raises(TypeError, match=r"x must have a floating-point dtype.*float8_e4m3fn"):
        f(x_adv, x.to(torch.float8_e4m3fn))
    with pytest.raises(TypeError, match=r"same framework, got JAX .* and PyTorch"):
        f(jnp.asarray(x_adv.numpy()), x)
    with pytest.raises(ValueError, match=r"x_adv must have a batch axis"):
        f(torch.tensor(0.5), torch.tensor(0.5))


PERCEPTUAL = ("ciede2000", "ssim", "msssim", "lpips")


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"])
@pytest.mark.parametrize("name", NAMES)
def test_perceptual_distances_refuse_images_outside_the_unit_range(name: str, backend: str) -> None:
    """SSIM (data range 1), CIEDE2000 (sRGB) and LPIPS are defined on images in [0, 1]: raw
    (0, 255) or (−1, 1) images gave plausible values 1.5× (SSIM), 12× (CIEDE2000), 57× or
    0.45× (LPIPS) off, silently. Now a ValueError naming the argument; rounding (1e-6 beyond)
    passes, and ℓp distances, defined on any range, take any values."""
    if backend == "tensorflow":
        pytest.importorskip("tensorflow")
    if name == "lpips" and backend != "torch":
        pytest.skip("LPIPS is PyTorch-only (refusals tested in the table)")
    make = {"torch": Torch, "jax": Jax, "tensorflow": Tf}[backend].tensor
    f = _distance(name)
    x_adv, x = _images(name)
    for lower, upper in ((0.0, 255.0), (-1.0, 1.0)):
        scaled = make(lower + x_adv * (upper - lower)), make(lower + x * (upper - lower))
        if name in PERCEPTUAL:
            with pytest.raises(
                ValueError, match=rf"x_adv must hold images with values in \[0, 1\] for {name}"
            ):  # noqa: E501
                f(*scaled)
            with pytest.raises(
                ValueError, match=rf"x must hold images with values in \[0, 1\] for {name}"
            ):  # noqa: E501
                f(make(x_adv), scaled[1])
        else:
            assert np.isfinite(np.asarray(f(*scaled))).all()
    rounded = np.clip(x_adv, 0, 1) * (1 + 1e-6)  # a de-normalisation's rounding
    assert np.isfinite(np.asarray(f(make(rounded), make(x)))).all()


def test_the_unit_range_is_not_read_inside_a_jit() -> None:
    """Inside ``jax.jit`` no value can be read: the check steps aside (the distances are used
    there by JAX users' own attacks), and the value is the eager one."""
    x_adv, x = (jnp.asarray(a, dtype=jnp.float32) for a in _images("ssim"))
    jitted = jax.jit(lambda a: distances.ssim(a, x))
    np.testing.assert_allclose(np.asarray(jitted(x_adv)), np.asarray(distances.ssim(x_adv, x)),
                               rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_numpy_arrays_in_numpy_out(name: str) -> None:
    x_adv, x = _images(name)
    if name == "lpips":
        with pytest.raises(TypeError, match=r"LPIPS needs PyTorch tensors.*numpy"):
            _distance(name)(x_adv, x)
        return
    out = _distance(name)(x_adv, x)
    assert isinstance(out, np.ndarray) and out.shape == (N,) and out.dtype == np.float64
    reference = Torch.numpy(
        _distance(name)(Torch.tensor(x_adv, "float64"), Torch.tensor(x, "float64"))
    )
    np.testing.assert_allclose(out, reference, rtol=1e-10)


# --- ℓ1 / ℓ2 gradients at zero, on every backend ------------------------------------------------


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_l1_subgradient_is_zero_at_zero_coordinates(backend: str) -> None:
    b = BACKENDS[backend]
    x = np.zeros((2, 4))
    x_adv = np.array([[0.0, 0.5, -0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    grad = b.grad(distances.l1, b.tensor(x_adv), b.tensor(x))
    np.testing.assert_array_equal(grad, [[0, 1, -1, 0], [0, 0, 0, 0]])
    # and the gradient with respect to x (the other argument) likewise
    grad_x = b.grad(lambda a, c: distances.l1(c, a), b.tensor(x), b.tensor(x_adv))
    np.testing.assert_array_equal(grad_x, [[0, -1, 1, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_l2_gradient_is_zero_not_nan_at_identical_inputs(backend: str) -> None:
    b = BACKENDS[backend]
    x = np.zeros((2, 4))
    x_adv = np.array([[0.0, 0.6, -0.8, 0.0], [0.0, 0.0, 0.0, 0.0]])
    grad = b.grad(distances.l2, b.tensor(x_adv), b.tensor(x))
    np.testing.assert_allclose(grad, [[0, 0.6, -0.8, 0], [0, 0, 0, 0]], rtol=1e-6)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_l1_l2_gradients_in_float64_on_jax_and_torch(backend: str) -> None:
    """The same sub-gradients in float64 (JAX with x64 switched on for this test only)."""
    b = BACKENDS[backend]
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        x = b.tensor(np.zeros((1, 3)), "float64")
        x_adv = b.tensor(np.array([[0.0, 3.0, -4.0]]), "float64")
        assert b.dtype_name(distances.l2(x_adv, x)) == "float64"
        np.testing.assert_array_equal(b.grad(distances.l1, x_adv, x), [[0, 1, -1]])
        np.testing.assert_allclose(b.grad(distances.l2, x_adv, x), [[0, 0.6, -0.8]], rtol=1e-15)
        np.testing.assert_array_equal(b.grad(distances.l2, x, x), [[0, 0, 0]])
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_finite_rows_on_every_backend_and_dtype(backend: str, dtype: str) -> None:
    """The per-sample finiteness test behind the NaN contract (0·v summed) against NumPy's
    isfinite: NaN, ±Inf, the dtype's largest finite value (whose sum would overflow), −0."""
    b = BACKENDS[backend]
    big = float(torch.finfo(getattr(torch, dtype)).max)
    rows = np.array(
        [
            [0.0, 1.0, -2.0, 0.5],
            [big, big, -big, big],  # finite, though Σv overflows
            [0.0, np.nan, 0.0, 0.0],
            [np.inf, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, -np.inf],
            [-0.0, -0.0, -0.0, -0.0],
            [np.inf, -np.inf, 0.0, 0.0],  # Σ would be NaN, not caught by a sum alone
        ]
    )
    expected = np.isfinite(rows).all(axis=1)
    out = finite_rows(ep.astensor(b.tensor(rows, dtype)))
    np.testing.assert_array_equal(np.asarray(out.numpy()), expected)
    # other shapes: (N,), (N, C, H, W), and an empty batch
    np.testing.assert_array_equal(
        np.asarray(finite_rows(ep.astensor(b.tensor(rows[:, 0], dtype))).numpy()),
        np.isfinite(rows[:, 0]),
    )
    images = np.zeros((2, 1, 2, 2))
    images[1, 0, 1, 1] = np.nan
    assert np.asarray(finite_rows(ep.astensor(b.tensor(images, dtype))).numpy()).tolist() == [
        True,
        False,
    ]
    assert finite_rows(ep.astensor(b.tensor(np.zeros((0, 3)), dtype))).shape == (0,)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_bounded_gradient_zeroes_nan_and_bounds_the_rest(backend: str, dtype: str) -> None:
    """What the solvers step from: NaN → 0 (no step from a NaN region of the model), ±Inf and
    values beyond ±10¹⁸ → ±10¹⁸ (a float16 model's overflowing backward), everything else and
    −0 kept bit for bit, dtype and shape kept, on every backend."""
    from alma_plugin.core.tensors import GRADIENT_LIMIT, bounded_gradient

    b = BACKENDS[backend]
    values = np.array([[1.5, np.nan, -np.inf, 3e-30], [np.inf, -0.0, np.nan, -2e20]])
    out = bounded_gradient(ep.astensor(b.tensor(values, dtype)))
    assert out.shape == values.shape and b.dtype_name(out.raw) == dtype
    limit = GRADIENT_LIMIT
    bounded = np.array([[1.5, 0.0, -limit, 3e-30], [limit, -0.0, 0.0, -limit]])
    expected = b.numpy(b.tensor(bounded, dtype))
    np.testing.assert_array_equal(b.numpy(out.raw), expected)
    assert np.signbit(b.numpy(out.raw)[1, 1])  # −0 kept


# ALMA's loop calls the function behind a distance without the contract (its iterates are
# finite and in the box): on finite inputs both must give the same values and gradients.
@pytest.mark.parametrize(
    ("name", "backend"),
    [
        pytest.param(name, backend, marks=_marks(name, backend, "unchecked"))
        for name in NAMES
        if name != "lpips"  # the registry's default weights may be absent
        for backend in BACKENDS
    ],
)
def test_unchecked_objective_matches_the_checked_one_on_finite_inputs(
    name: str, backend: str
) -> None:
    b = BACKENDS[backend]
    registered = name in distances.DISTANCES  # ℓ∞ is ALMA prox's, outside the registry
    objective = distances.get_distance(name).objective if registered else _distance(name)
    fast = unchecked(objective)
    assert fast is not objective  # the solver really skips the contract for this distance
    x_adv, x = _images(name)
    a, c = b.tensor(x_adv), b.tensor(x)
    values = fast(ep.astensor(a), ep.astensor(c)).raw
    np.testing.assert_array_equal(b.numpy(values), b.numpy(objective(a, c)))
    grad = b.grad(lambda u, v: fast(ep.astensor(u), ep.astensor(v)).raw, a, c)
    reference = b.grad(objective, a, c)
    if backend == "torch":  # op by op: the same operations give the same bits
        np.testing.assert_array_equal(grad, reference)
    else:  # one jitted XLA program: the contract's extra masking changes its fusion, so the
        # last bits (MS-SSIM's gradient, a sum of cancelling terms: 5e-6 of its largest entry)
        np.testing.assert_allclose(grad, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
