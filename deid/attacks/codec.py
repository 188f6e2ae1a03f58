"""A real H.264 round trip inside a training loop, passed through straight (BPDA).

EOT's codec stand-in (:mod:`deid.attacks.eot`) is differentiable but only like H.264: a
block DCT with one quantisation table. Here the faces go through deid's own writer
(:class:`deid.io.VideoWriter`, libx264) and reader, laid out on a textured backdrop in
1280x720 frames (:func:`layout`, :func:`background`: ``deid eval survival``'s too), so
the loss sees what the codec really leaves of a perturbation; the gradient passes through
as if the codec were the identity (Athalye et al.'s BPDA), the same trick as the 8-bit
rounding's.

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
from deid.errors import ConfigError
from deid.io import read_frames, write_video

FRAME_HW = (720, 1280)


def layout(
    n: int, face_hw: tuple[int, int], frame_hw: tuple[int, int], seed: int, align: int = 1
) -> list[tuple[int, int, int]]:
    """(scene, y, x) top-left corner of each face: a grid with a random jitter per cell.

    Args:
        n: number of faces.
        face_hw: (h, w) of a face crop.
        frame_hw: (H, W) of a frame.
        seed: jitter seed.
        align: snap corners to multiples of this (1: anywhere; 16: on H.264's macroblocks).
    """
    fh, fw = face_hw
    pitch_y, pitch_x = fh + 24, fw + 24
    rows, cols = (frame_hw[0] - 8) // pitch_y, (frame_hw[1] - 8) // pitch_x
    if rows < 1 or cols < 1:
        raise ConfigError(f"faces of {fh}x{fw} px do not fit a {frame_hw[1]}x{frame_hw[0]} frame")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scene, cell = divmod(i, rows * cols)
        r, c = divmod(cell, cols)
        y = 4 + r * pitch_y + int(rng.integers(0, 20))
        x = 4 + c * pitch_x + int(rng.integers(0, 20))
        out.append((scene, y // align * align, x // align * align))
    return out


def background(frame_hw: tuple[int, int], seed: int) -> np.ndarray:
    """A textured, smooth backdrop (H, W, 3) uint8: what surrounds faces in aerial footage
    matters to the encoder's rate control, so it is not flat."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = frame_hw
    coarse = rng.uniform(40, 200, size=(h // 40 + 1, w // 40 + 1, 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def compose_frames(
    bg: np.ndarray, adv8: list[torch.Tensor], places: list[tuple[int, int, int]], frames: int
) -> list[np.ndarray]:
    """The video: each scene's faces pasted onto the backdrop, ``frames`` frames per scene."""
    fh, fw = adv8[0].shape[-2:]
    video = []
    for s in range(max(p[0] for p in places) + 1):
        for k in range(frames):
            f = bg.copy()
            for i, (sc, py, px) in enumerate(places):
                if sc == s:
                    f[py : py + fh, px : px + fw] = to_uint8(adv8[k][i : i + 1])[0]
            video.append(f)
    return video


def cut_faces(
    decoded: list[np.ndarray],
    places: list[tuple[int, int, int]],
    frames: int,
    hw: tuple[int, int],
) -> list[torch.Tensor]:
    """The faces cut back out of decoded frames: one (N, 3, h, w) tensor per frame index."""
    fh, fw = hw
    return [
        from_uint8(
            np.stack([decoded[sc * frames + k][y : y + fh, x : x + fw] for sc, y, x in places])
        )
        for k in range(frames)
    ]


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
    groups = [f.detach().float().cpu().expand(-1, 3, -1, -1) for f in (before, x) if f is not None]
    video = compose_frames(background(FRAME_HW, seed), groups, places, len(groups))
    with tempfile.TemporaryDirectory(prefix="deid-h264-") as tmp:
        path = Path(tmp) / "faces.mp4"
        write_video(path, video, fps=25, crf=crf)
        decoded = list(read_frames(path))
    out = cut_faces(decoded, places, len(groups), (h, w))[-1]  # x's frame of each scene
    if c == 1:
        out = out.mean(1, keepdim=True)
    return out.to(device=x.device, dtype=x.dtype)


def h264_ste(x: Tensor, crf: int, seed: int = 0, before: Tensor | None = None) -> Tensor:
    """:func:`h264_round_trip` forward, the identity backward (BPDA)."""
    with torch.no_grad():
        coded = h264_round_trip(x, crf, seed, before)
    return x + (coded - x).detach()
