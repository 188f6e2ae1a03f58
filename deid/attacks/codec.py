"""A real H.264 round trip inside a training loop, passed through straight (BPDA).

EOT's codec stand-in (:mod:`deid.attacks.eot`) is differentiable but only like H.264: a
block DCT with one quantisation table. Here the faces go through deid's own writer
(:class:`deid.io.VideoWriter`, libx264) and reader, laid out on the textured backdrop of
``deid eval survival`` in 1280x720 frames, so the loss sees what the codec really leaves of
a perturbation; the gradient passes through as if the codec were the identity (Athalye et
al.'s BPDA), the same trick as the 8-bit rounding's.

With ``before``, each frame of faces is written after a frame of those (e.g. the clean
faces) at the same places, so the encoder codes the perturbation as a predicted frame's
residual, as in a video whose every frame is attacked afresh; without it, as an intra frame.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from deid.attacks.base import from_uint8, to_uint8
from deid.eval.survival import FRAME_HW, background, layout
from deid.io import read_frames, write_video


def h264_round_trip(x: Tensor, crf: int, seed: int = 0, before: Tensor | None = None) -> Tensor:
    """``x`` (N, C, h, w) in [0, 1] (C = 1 or 3) after deid's H.264 writer at ``crf`` and its
    reader: the same crops cut out of the decoded frames (on ``x``'s device and dtype).

    Args:
        x: the faces.
        crf: the writer's constant rate factor.
        seed: the backdrop's texture and the faces' places.
        before: faces of ``x``'s shape written in a frame before ``x``'s, at the same places
            (``x``'s frame is then a predicted one); none: ``x``'s frame stands alone.
    """
    n, c, h, w = x.shape
    places = layout(n, (h, w), FRAME_HW, seed)
    bg = background(FRAME_HW, seed)
    groups = [before, x] if before is not None else [x]
    video = []
    scenes = max(p[0] for p in places) + 1
    for s in range(scenes):
        for faces in groups:
            px = to_uint8(faces.detach().float().cpu().expand(-1, 3, -1, -1))
            f = bg.copy()
            for i, (sc, y, xx) in enumerate(places):
                if sc == s:
                    f[y : y + h, xx : xx + w] = px[i]
            video.append(f)
    with tempfile.TemporaryDirectory(prefix="deid-h264-") as tmp:
        path = Path(tmp) / "faces.mp4"
        write_video(path, video, fps=25, crf=crf)
        decoded = list(read_frames(path))
    k = len(groups) - 1  # x's frame within each scene
    crops = np.stack(
        [decoded[sc * len(groups) + k][y : y + h, xx : xx + w] for sc, y, xx in places]
    )
    out = from_uint8(crops)
    if c == 1:
        out = out.mean(1, keepdim=True)
    return out.to(device=x.device, dtype=x.dtype)


def h264_ste(x: Tensor, crf: int, seed: int = 0, before: Tensor | None = None) -> Tensor:
    """:func:`h264_round_trip` forward, the identity backward (BPDA)."""
    with torch.no_grad():
        coded = h264_round_trip(x, crf, seed, before)
    return x + (coded - x).detach()
