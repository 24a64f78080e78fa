"""DLR⁺ (eq. 4) and tDLR⁺ (eq. 18): sign ⇔ attack goal, scale invariance, small K fallbacks;
the smoothed max of DLR⁺'s gradient (``ProxParams.smooth_max``)."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np
import pytest
import torch

from alma_plugin.core.constraints import dlr_plus, is_satisfied, smoothed_dlr_plus


def _random_logits(n: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Integer-spaced logits: no near-ties, so argmax is unambiguous.
    return torch.stack([torch.randperm(k, generator=gen).double() for _ in range(n)]) * 0.5


@pytest.mark.parametrize("k", [2, 3, 4, 10])
def test_dlr_negative_iff_misclassified(k: int) -> None:
    z = _random_logits(400, k)
    y = torch.randint(0, k, (400,), generator=torch.Generator().manual_seed(1))
    d = dlr_plus(ep.astensor(z), ep.astensor(y)).raw
    misclassified = z.argmax(1) != y
    assert ((d < 0) == misclassified).all()
    assert misclassified.any() and (~misclassified).any()


@pytest.mark.parametrize("k", [2, 3, 4, 10])
def test_tdlr_negative_iff_target_reached(k: int) -> None:
    z = _random_logits(400, k, seed=2)
    t = torch.randint(0, k, (400,), generator=torch.Generator().manual_seed(3))
    d = dlr_plus(ep.astensor(z), ep.astensor(t), targeted=True).raw
    reached = z.argmax(1) == t
    assert ((d < 0) == reached).all()
    assert reached.any() and (~reached).any()


def test_dlr_matches_formula_and_is_scale_invariant() -> None:
    z = torch.tensor([[3.0, 1.0, 2.0, -1.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([2])
    expected = (2.0 - 3.0) / (3.0 - 1.0)  # (z_y − max_{i≠y} z_i) / (z_π1 − z_π3)
    assert dlr_plus(ep.astensor(z), ep.astensor(y)).item() == pytest.approx(expected, abs=1e-5)
    scaled = dlr_plus(ep.astensor(z * 10 + 4), ep.astensor(y)).item()
    assert scaled == pytest.approx(expected, abs=1e-5)
    t = torch.tensor([4])
    expected_t = (3.0 - 0.5) / (3.0 - (1.0 + 0.5) / 2)  # eq. 18
    assert dlr_plus(ep.astensor(z), ep.astensor(t), True).item() == pytest.approx(
        expected_t, abs=1e-5
    )


def test_two_classes_fall_back_to_logit_difference() -> None:
    z = torch.tensor([[1.0, 3.5], [2.0, -1.0]])
    y = torch.tensor([0, 0])
    d = dlr_plus(ep.astensor(z), ep.astensor(y)).raw
    torch.testing.assert_close(d, torch.tensor([-2.5, 3.0]), atol=1e-5, rtol=0)


def test_ties_do_not_count_as_success() -> None:
    z = ep.astensor(torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]]))
    y = ep.astensor(torch.tensor([0, 2]))
    assert not is_satisfied(z, y).any()
    assert (dlr_plus(z, y).raw > 0).all()
    assert not is_satisfied(z, y, targeted=True).any()


def test_targeted_three_classes_keeps_a_gradient_when_target_is_lowest() -> None:
    z = torch.tensor([[3.0, 1.0, -2.0]], requires_grad=True)
    d = dlr_plus(ep.astensor(z), ep.astensor(torch.tensor([2])), targeted=True).raw
    (grad,) = torch.autograd.grad(d.sum(), z)
    assert d.item() == pytest.approx(5.0, abs=1e-5) and grad.abs().sum() > 0


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("k", [3, 4, 5, 10])
def test_minus_infinity_logits_are_impossible_classes(k: int, targeted: bool) -> None:
    """A −∞ logit (log-softmax underflowing) is a class of probability 0. Where it is DLR⁺'s
    π3 (tDLR⁺'s π4) the denominator was +∞ and d ≡ 0: no success could ever be seen, not even
    for a sample already misclassified. The sign must still give the goal, d must keep a
    finite, non-zero gradient where it is finite (eq. 3's margin there), and be DLR⁺ itself
    where enough classes are possible."""
    z = _random_logits(400, k, seed=4)
    generator = torch.Generator().manual_seed(5)
    impossible = torch.rand(400, k, generator=generator) < 0.4
    impossible[torch.arange(400), z.argmax(1)] = False  # the prediction stays possible
    z = torch.where(impossible, -torch.inf, z)
    labels = torch.randint(0, k, (400,), generator=generator)
    d = dlr_plus(ep.astensor(z), ep.astensor(labels), targeted=targeted).raw
    assert ((d < 0) == ((z.argmax(1) == labels) if targeted else (z.argmax(1) != labels))).all()
    finite = torch.isfinite(d)
    assert finite.float().mean() > 0.5
    leaf = z[finite].clone().requires_grad_(True)
    d_finite = dlr_plus(ep.astensor(leaf), ep.astensor(labels[finite]), targeted=targeted).raw
    (gradient,) = torch.autograd.grad(d_finite.sum(), leaf)
    assert torch.isfinite(gradient).all() and (gradient.abs().sum(1) > 0).all()
    # enough possible classes, the label among them: the same d as with the impossible
    # classes' logits far below the others
    fewest = 4 if targeted else 3  # eq. 3 below (tDLR⁺ with K = 3 is eq. 3 throughout)
    kept = ((~impossible).sum(1) >= fewest) & ~impossible[torch.arange(400), labels]
    assert kept.any() or k < fewest
    low = torch.where(impossible, -1e3, z)[kept]
    expected = dlr_plus(ep.astensor(low), ep.astensor(labels[kept]), targeted=targeted).raw
    assert torch.equal(d[kept], expected)


def test_smallest_class_counts_with_a_denominator_use_it() -> None:
    """DLR⁺ needs π3 and tDLR⁺ needs π4, so eq. 4 holds from K = 3 and eq. 18 from K = 4: only
    below that the plain margin (eq. 3) is used. Checked at K = 3 (DLR⁺) and K = 4 (tDLR⁺), the
    formulas and their scale invariance (eq. 3's margin would be 10× larger at 10 z)."""
    z3 = torch.tensor([[3.0, 1.0, -2.0]], dtype=torch.float64)
    y = torch.tensor([0])
    z4 = torch.tensor([[3.0, 1.0, -2.0, -4.0]], dtype=torch.float64)
    t = torch.tensor([1])
    expected = (3.0 - 1.0) / (3.0 - (-2.0))  # (z_y − max_{i≠y} z_i) / (z_π1 − z_π3)
    # (max_{i≠t} z_i − z_t) / (z_π1 − (z_π3 + z_π4)/2)
    expected_t = (3.0 - 1.0) / (3.0 - (-2.0 - 4.0) / 2)
    for scale in (1.0, 10.0):
        d = dlr_plus(ep.astensor(scale * z3), ep.astensor(y)).item()
        d_t = dlr_plus(ep.astensor(scale * z4), ep.astensor(t), True).item()
        assert d == pytest.approx(expected, abs=1e-5)
        assert d_t == pytest.approx(expected_t, abs=1e-5)


# --- the smoothed max of DLR⁺'s gradient (ProxParams.smooth_max) ----------------------------


def _smoothed_reference(z: torch.Tensor, y: torch.Tensor, kappa: float) -> torch.Tensor:
    """(z_y − T·log Σ_{i≠y} exp(z_i / T)) / s with s = z_π1 − z_π3 and T = κ·s held fixed,
    written with torch.logsumexp: the function whose gradient ``smoothed_dlr_plus`` takes."""
    top = z.detach().topk(3, dim=1).values
    s = top[:, 0] - top[:, 2]
    temperature = (kappa * s).unsqueeze(1)
    others = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), -torch.inf)
    lse = temperature.squeeze(1) * torch.logsumexp(others / temperature, dim=1)
    return (z.gather(1, y[:, None]).squeeze(1) - lse) / s


@pytest.mark.parametrize("kappa", [0.05, 0.3, 2.0])
def test_smoothed_dlr_has_dlr_values_and_the_log_sum_exp_gradient(kappa: float) -> None:
    """Value: DLR⁺ bit for bit (success, μ, ρ and the masking read it). Gradient: that of the
    log-sum-exp formula written independently with torch.logsumexp (float64)."""
    z = (torch.randn(64, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
         * 3).requires_grad_(True)  # fmt: skip
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(7))
    d = smoothed_dlr_plus(ep.astensor(z), ep.astensor(y), kappa).raw
    assert torch.equal(d.detach(), dlr_plus(ep.astensor(z.detach()), ep.astensor(y)).raw)
    (gradient,) = torch.autograd.grad(d.sum(), z)
    (expected,) = torch.autograd.grad(_smoothed_reference(z, y, kappa).sum(), z)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-12)
    # every other class pulls (a softmax weight > 0), y pushes with 1/s
    assert (gradient.gather(1, y[:, None]) > 0).all()
    assert ((gradient < 0).sum(1) == 9).all()


def test_smoothed_dlr_tends_to_dlr_at_a_fixed_denominator() -> None:
    """κ → 0: the log-sum-exp is the max, the gradient DLR⁺'s with its denominator held
    (−1/s on the runner-up only, 1/s on y)."""
    z = torch.tensor([[3.0, 1.0, 2.0, -1.0, 0.5], [0.0, 4.0, 1.0, 3.0, 2.5]],
                     dtype=torch.float64, requires_grad=True)  # fmt: skip
    y = torch.tensor([2, 1])
    d = smoothed_dlr_plus(ep.astensor(z), ep.astensor(y), 1e-4).raw
    (gradient,) = torch.autograd.grad(d.sum(), z)
    expected = torch.zeros_like(z)
    expected[0, 2], expected[0, 0] = 1 / 2.0, -1 / 2.0  # s = 3 − 1
    expected[1, 1], expected[1, 3] = 1 / 1.5, -1 / 1.5  # s = 4 − 2.5
    torch.testing.assert_close(gradient, expected, rtol=0, atol=1e-12)


def test_smoothed_dlr_with_impossible_classes_and_two_classes_stays_finite() -> None:
    """−∞ logits (log-softmax underflowing) get no weight and leave a finite gradient; every
    other class −∞ (no weight at all) and K = 2 (eq. 3, s = 1) keep DLR⁺'s value."""
    inf = torch.inf
    z = torch.tensor([[2.0, -inf, 1.0, -inf], [1.0, -inf, -inf, -inf], [0.5, 3.0, -inf, 1.0]],
                     dtype=torch.float64, requires_grad=True)  # fmt: skip
    y = torch.tensor([0, 0, 1])
    d = smoothed_dlr_plus(ep.astensor(z), ep.astensor(y), 0.1).raw
    assert torch.equal(d.detach(), dlr_plus(ep.astensor(z.detach()), ep.astensor(y)).raw)
    (gradient,) = torch.autograd.grad(d[[0, 2]].sum(), z)
    assert torch.isfinite(gradient).all() and (gradient[[0, 2]].abs().sum(1) > 0).all()
    # y's logit −∞ (misclassified whatever moves): DLR⁺'s −∞, not NaN, so a sample already
    # misclassified stays a success; another class at +∞: NaN as DLR⁺ (no success, by
    # valid_logit_rows anyway)
    z_inf = torch.tensor([[-inf, 1.0, 0.5, 0.0], [1.0, inf, 0.5, 0.0]], dtype=torch.float64,
                         requires_grad=True)  # fmt: skip
    y_inf = torch.tensor([0, 0])
    d_inf = smoothed_dlr_plus(ep.astensor(z_inf), ep.astensor(y_inf), 0.1).raw
    assert d_inf[0].item() == -inf and torch.isnan(d_inf[1])
    assert torch.isnan(dlr_plus(ep.astensor(z_inf.detach()), ep.astensor(y_inf)).raw[1])
    z2 = torch.tensor([[1.0, 3.5], [2.0, -1.0]], requires_grad=True)
    y2 = torch.tensor([0, 0])
    d2 = smoothed_dlr_plus(ep.astensor(z2), ep.astensor(y2), 0.1).raw
    assert torch.equal(d2.detach(), dlr_plus(ep.astensor(z2.detach()), ep.astensor(y2)).raw)
    (gradient2,) = torch.autograd.grad(d2.sum(), z2)
    torch.testing.assert_close(gradient2, torch.tensor([[1.0, -1.0], [1.0, -1.0]]))


@pytest.mark.parametrize("backend", ["jax", "tf"])
def test_smoothed_dlr_agrees_with_pytorch_on_every_backend(backend: str) -> None:
    """The same values (bit for bit DLR⁺'s in each framework) and gradients in float64 on JAX
    and TensorFlow as on PyTorch: stop-gradient and the softmax weights behave alike."""
    z = torch.randn(8, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    y = torch.randint(0, 6, (8,), generator=torch.Generator().manual_seed(9))
    leaf = z.clone().requires_grad_(True)
    d = smoothed_dlr_plus(ep.astensor(leaf), ep.astensor(y), 0.2).raw
    (expected,) = torch.autograd.grad(d.sum(), leaf)
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        try:
            zj, yj = jax.numpy.asarray(z.numpy()), jax.numpy.asarray(y.numpy())

            def f(u: Any) -> Any:
                return smoothed_dlr_plus(ep.astensor(u), ep.astensor(yj), 0.2).raw

            value, gradient = f(zj), jax.grad(lambda u: f(u).sum())(zj)
        finally:
            jax.config.update("jax_enable_x64", False)
    else:
        tf = pytest.importorskip("tensorflow")
        zt = tf.Variable(z.numpy())
        with tf.GradientTape() as tape:
            value = smoothed_dlr_plus(ep.astensor(zt + 0), ep.astensor(tf.constant(y.numpy())),
                                      0.2).raw  # fmt: skip
            total = tf.reduce_sum(value)
        gradient = tape.gradient(total, zt)
    np.testing.assert_allclose(np.asarray(value), d.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gradient), expected.numpy(), rtol=1e-10, atol=1e-12)
