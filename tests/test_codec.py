"""The real H.264 round trip of AdvGAN's training (deid.attacks.codec): what libx264 leaves
of a perturbation, and a straight-through gradient."""

from __future__ import annotations

import torch

from deid.attacks.codec import h264_round_trip, h264_ste


def _faces(channels: int = 3) -> torch.Tensor:
    """Six smooth 40x36 patterns (a face's colours vary slowly; random per-pixel colour
    noise is mostly lost to 4:2:0 chroma alone)."""
    coarse = torch.rand(6, channels, 4, 4, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(coarse, size=(40, 36), mode="bilinear")


def _kept(y: torch.Tensor, x: torch.Tensor, xa: torch.Tensor) -> float:
    """The share of the perturbation ``xa - x`` left in ``y``, by projection on it."""
    return float(((y - x) * (xa - x)).sum() / (xa - x).pow(2).sum())


def test_the_round_trip_keeps_faces_and_loses_more_of_a_perturbation_at_a_higher_crf() -> None:
    x = _faces()
    sign = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) > 0.5, 1, -1)
    xa = (x + 8 / 255 * sign).clamp(0, 1)
    kept = {}
    for crf in (12, 35):
        y = h264_round_trip(xa, crf, seed=2)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert (y - x).abs().mean() < 16 / 255  # still the face
        kept[crf] = _kept(y, x, xa)
    # 2026-12-07: 0.37 and 0.02 (a pixel-wise sign pattern is what H.264 keeps least of)
    assert kept[12] > 0.25 and kept[35] < kept[12] / 4


def test_a_predicted_frame_loses_more_than_an_intra_frame() -> None:
    """After a frame of the clean faces the encoder codes the perturbation as residual (and
    skips blocks), so less of it survives than in a frame that stands alone."""
    x = _faces()
    d = 6 / 255 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(3)))
    xa = (x + d).clamp(0, 1)

    intra, predicted = h264_round_trip(xa, 12, 4), h264_round_trip(xa, 12, 4, before=x)
    assert _kept(predicted, x, xa) < 0.7 * _kept(intra, x, xa)  # 2026-12-07: 0.17 vs 0.34


def test_grey_faces_stay_grey_and_the_gradient_passes_straight() -> None:
    x = _faces(channels=1).requires_grad_(True)
    y = h264_ste(x, 23, seed=5)
    assert y.shape == x.shape
    assert torch.allclose(y.detach(), h264_round_trip(x.detach(), 23, seed=5))
    (y * torch.arange(y.numel()).view_as(y)).sum().backward()
    assert torch.equal(x.grad, torch.arange(y.numel()).view_as(y).float())
