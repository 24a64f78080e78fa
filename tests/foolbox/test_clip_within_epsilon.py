"""Clipping a perturbation to ε in Foolbox's distances (``alma_plugin.foolbox.distances``): the
point returned keeps the inputs' dtype and is the point measured; samples within ε come back
bit for bit."""

from __future__ import annotations

import foolbox as fb
import torch

from alma_plugin.foolbox.distances import NormalisedDistance, WithinSegment


def test_a_float16_clip_returns_float16_points_within_epsilon() -> None:
    """Half-precision images: the shrunk point is rounded to float16 before it is measured,
    so the point returned (float16, like the inputs) measures at most ε."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 4, generator=generator).half()
    x_adv = (x.float() + 0.2 * torch.randn(x.shape, generator=generator)).clamp(0, 1).half()
    distance = NormalisedDistance("ciede2000")
    epsilon = distance(x, x_adv).float().min().item() / 3
    clipped = distance.clip_perturbation(x, x_adv, epsilon)
    assert clipped.dtype == torch.float16
    assert (distance(x, clipped) <= epsilon).all()


def test_within_segment_returns_samples_within_epsilon_bit_for_bit() -> None:
    """Foolbox's ℓ2 clip computes x + (x̃ − x)·1 for a sample within ε, which rounds in
    float32 (x̃ tiny, x near 1: x + (x̃ − x) ≠ x̃); such samples must come back as x̃ itself."""
    generator = torch.Generator().manual_seed(1)
    x = 0.5 + 0.5 * torch.rand(8, 1, 4, 4, generator=generator)
    x_adv = 1e-3 * torch.rand(8, 1, 4, 4, generator=generator)
    assert not torch.equal(x + (x_adv - x), x_adv)  # Foolbox's formula does round here
    norms = fb.distances.l2(x, x_adv)
    epsilon = norms.median().item()
    clipped = WithinSegment(fb.distances.l2).clip_perturbation(x, x_adv, epsilon)
    within = norms <= epsilon
    assert within.any() and (~within).any()
    assert torch.equal(clipped[within], x_adv[within])
    assert (fb.distances.l2(x, clipped) <= epsilon).all()
