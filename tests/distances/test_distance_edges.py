"""Edge behaviours of the distances that no other test pinned (each found by mutation testing):
safe_sqrt below 0, float64 kept (from either operand), ℓp of empty samples, SSIM's gap maps
under rounding, CIEDE2000 on one channel."""

from __future__ import annotations

import eagerpy as ep
import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")


def test_safe_sqrt_is_zero_below_zero_with_zero_gradient() -> None:
    """√ of a value rounding made slightly negative (a sum of squares' cancellation) is 0, not
    the negative value, and its gradient there is 0."""
    from alma_plugin.distances._common import safe_sqrt

    x = torch.tensor([-1e-9, -2.0, 0.0, 4.0], dtype=torch.float64, requires_grad=True)
    y = safe_sqrt(ep.astensor(x)).raw
    assert y.tolist() == [0.0, 0.0, 0.0, 2.0]
    y.sum().backward()
    assert x.grad is not None
    assert x.grad[[0, 1, 3]].tolist() == [0.0, 0.0, 0.25]  # (at 0 the caller's Σ d² gives 0)


def test_distances_of_float64_inputs_are_computed_in_float64() -> None:
    """A float64 pair is measured in float64: a perturbation float32 cannot represent on top
    of the image (1e-10) is measured, not rounded away."""
    from alma_plugin.distances import l2

    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    value = l2(x + 1e-10, x)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, torch.full((2,), 4e-10, dtype=torch.float64), rtol=1e-4,
                               atol=0)  # fmt: skip


def test_a_float64_reference_makes_a_float32_pair_float64() -> None:
    """Either operand in float64 makes the computation float64, the reference ``x`` too: its
    1e-10 offset from a float32 ``x_adv`` is measured, not rounded away with ``x``."""
    from alma_plugin.distances import l2

    x_adv = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    value = l2(x_adv, x_adv.double() + 1e-10)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, torch.full((2,), 4e-10, dtype=torch.float64), rtol=1e-4,
                               atol=0)  # fmt: skip


def test_lp_distances_of_samples_without_features_are_zero() -> None:
    """(N, 0) samples: ‖·‖ of an empty vector is 0 for every p (ℓ∞ too: the max of nothing)."""
    from alma_plugin.distances import l1, l2, linf

    empty = torch.zeros(3, 0)
    for distance in (l1, l2, linf):
        assert distance(empty, empty).tolist() == [0.0, 0.0, 0.0]


def test_ssim_gap_maps_stay_non_negative_where_rounding_dips_a_variance_below_zero() -> None:
    """A constant shift d has σ_d² = 0, which E[d²] − μ_d² rounds to slightly below 0 in
    float32: 1 − cs stays >= 0 (as documented), not a negative contribution."""
    from alma_plugin.distances._ssim import _ssim_gaps

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.6
    d = torch.full_like(x, 1 / 3)
    one_minus_l, one_minus_cs = _ssim_gaps(ep.astensor(x + d), ep.astensor(d), 1.0)
    assert float(one_minus_cs.raw.min()) >= 0 and float(one_minus_l.raw.min()) > 0


def test_ciede2000_measures_a_change_of_one_channel() -> None:
    """Only pixels equal in all three channels contribute exactly 0: a pixel that changed in
    one channel contributes its ΔE₀₀."""
    from alma_plugin.distances import ciede2000
    from alma_plugin.distances._color import ciede2000_lab, rgb_to_lab

    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_adv = x.clone()
    x_adv[:, 0, 1, 2] = (x[:, 0, 1, 2] + 0.2) % 1  # red only, at one pixel
    expected = ciede2000_lab(rgb_to_lab(ep.astensor(x_adv)), rgb_to_lab(ep.astensor(x))).raw
    value = ciede2000(x_adv, x)
    assert (value > 1).all()
    torch.testing.assert_close(value, expected[:, 1, 2], rtol=1e-6, atol=0)


def test_ssim_refuses_images_without_channels_and_hints_at_channels_last() -> None:
    """(N, 0, H, W) gave NaN (a mean over no channel); (N, H, W, C) was told its 12×12 image
    was too small, naming the channel axis as a side."""
    from alma_plugin.distances import msssim, ssim

    empty = torch.rand(2, 0, 16, 16)
    for distance in (ssim, msssim):
        with pytest.raises(ValueError, match="at least one channel"):
            distance(empty, empty)
    last = torch.rand(2, 12, 12, 3)
    with pytest.raises(ValueError, match=r"channels last\? the layout is \(N, C, H, W\)"):
        ssim(last, last)
    assert ssim(torch.rand(0, 3, 16, 16), torch.rand(0, 3, 16, 16)).shape == (0,)


@pytest.mark.parametrize("name", ["l1", "l2", "linf", "ciede2000", "ssim", "msssim", "lpips"])
def test_public_distances_show_the_callers_tensor_type_in_their_signature(name: str) -> None:
    """help() and inspect.signature show D(x_adv: T, x: T) -> T, the caller's type in and out
    (before: the eagerpy annotations of the function inside, ep.Tensor -> ep.Tensor, for every
    distance but SSIM and MS-SSIM)."""
    import inspect

    import alma_plugin.distances as distances

    signature = inspect.signature(getattr(distances, name))
    annotations = [p.annotation for p in list(signature.parameters.values())[:2]]
    assert [*annotations, signature.return_annotation] == ["T"] * 3 or all(
        getattr(a, "__name__", None) == "T" for a in [*annotations, signature.return_annotation]
    )


def test_lpips_weights_and_colour_inputs_of_the_wrong_type_are_named() -> None:
    """Before: pathlib's "expected str, bytes or os.PathLike object, not int", and
    "'list' object has no attribute 'shape'"."""
    from alma_plugin.distances import LPIPS, check_color_input

    with pytest.raises(TypeError, match=r"backbone weights must be a path or a state dict.*int"):
        LPIPS(backbone_weights=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"x must be a tensor .*got list"):
        check_color_input([[0.0, 1.0]])
