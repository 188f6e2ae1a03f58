"""Adapter over facenet-pytorch's MTCNN (its P/R/O-Net weights ship in the wheel).

MTCNN searches one image at one scale (its own image pyramid inside); frames of any size,
mirror padding, downscaling and tiling of 4K frames come from
:class:`deid.detect.tiling.TiledDetector`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deid.detect.mtcnn_fast import detect_faces
from deid.detect.tiling import RawDetections, TiledDetector, no_detections, tiling_options

if TYPE_CHECKING:
    from deid.detect.base import DetectorSettings

# the second look (TiledDetector.second_look) searches views in which the unsure box is
# 48 px: faces from 20 px (a box may be loose), each stage lenient
_LOOK_MIN_FACE = 20
_LOOK_THRESHOLDS = (0.5, 0.5, 0.3)


class MTCNNDetector(TiledDetector):
    """Batched MTCNN face detection returning :class:`deid.types.Detections`.

    Args:
        min_face_size: smallest face side in pixels to look for (drone faces are small).
        thresholds: P-, R- and O-Net score thresholds.
        min_score: drop faces whose final probability is below this.
        device: torch device.
        max_side: frames whose longer side exceeds this are detected on a downscaled copy
            and the boxes scaled back (``None``: always full resolution).
        factor: MTCNN's image-pyramid scale step.
        tile: frames whose longer side exceeds this are detected in overlapping
            full-resolution windows of at most ``tile`` px plus one overview pass on a copy
            downscaled to ``tile`` px (``None``: no tiling). Takes precedence over
            ``max_side`` for such frames.
        tile_overlap: overlap of neighbouring windows in px; faces up to this size are
            always whole in some window, larger ones are left to the overview pass.
        tile_batch: windows per MTCNN call (bounds memory).
        nms_iou: box IoU above which two detections of a tiled frame are the same face.
        edge_pad: px of mirror padding around each frame before detection, so that faces
            cut by the frame edge (up to about two thirds outside) are still found; mirror
            images of faces near the edge are dropped again (0: no padding).
        upscale: frames detected at full resolution are searched on a bicubic copy
            enlarged by this factor: MTCNN's R- and O-Net then see a small face's crop
            smooth instead of blown up from a few pixels (its own resampling is
            area/nearest), at the same pyramid levels (faces from ``min_face_size`` px).
        pyramid: where P-Net's pyramid levels of an enlarged frame are resampled from:
            ``"enlarged"``, the bicubic copy (facenet-pytorch's way on the copy), or
            ``"frame"``, the frame itself (a quarter of the pixels to read at ``upscale``
            2; the levels keep their sizes; README "Speed").

    Example:
        >>> det = MTCNNDetector(min_face_size=20)
        >>> d = det.detect([np.zeros((64, 64, 3), np.uint8)])[0]
        >>> len(d), d.boxes.shape
        (0, (0, 4))
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        min_score: float = 0.9,
        device: torch.device | str = "cpu",
        max_side: int | None = None,
        factor: float = 0.709,
        tile: int | None = None,
        tile_overlap: int = 128,
        tile_batch: int = 4,
        nms_iou: float = 0.4,
        edge_pad: int = 0,
        upscale: float = 1.0,
        recheck_score: float | None = None,
        confirm_score: float | None = None,
        pyramid: str = "enlarged",
        stretch_range: float | None = None,
    ) -> None:
        from facenet_pytorch import MTCNN

        if pyramid not in ("frame", "enlarged"):
            raise ValueError(f"pyramid: expected 'frame' or 'enlarged', got {pyramid!r}")
        self.pyramid = pyramid

        super().__init__(
            min_face_size,
            min_score,
            max_side=max_side,
            tile=tile,
            tile_overlap=tile_overlap,
            tile_batch=tile_batch,
            nms_iou=nms_iou,
            edge_pad=edge_pad,
            upscale=upscale,
            recheck_score=recheck_score,
            confirm_score=confirm_score,
            stretch_range=stretch_range,
        )
        self.device = torch.device(device)
        thresholds = list(thresholds)
        if self.recheck_score is not None:  # the last stage lets the unsure faces through
            thresholds[2] = min(thresholds[2], self.recheck_score)
        # draws from torch's RNG (the networks are initialised before their weights load)
        self._mtcnn = MTCNN(
            min_face_size=self.min_face_size,
            thresholds=list(thresholds),
            factor=factor,
            keep_all=True,
            post_process=False,
            select_largest=False,
            device=self.device,
        )
        # channels-last weights: the networks run about 2x faster on the CPU (mtcnn_fast)
        for net in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
            net.to(memory_format=torch.channels_last)
        # the same networks, looking for faces `upscale` times larger in enlarged frames
        self._mtcnn_enlarged = copy.copy(self._mtcnn)
        self._mtcnn_enlarged.min_face_size = self.min_face_size * self.upscale
        # the second look: faces of about LOOK_FACE px, every stage lenient (only a look
        # scoring confirm_score changes anything)
        self._mtcnn_look = copy.copy(self._mtcnn)
        self._mtcnn_look.min_face_size = _LOOK_MIN_FACE
        self._mtcnn_look.thresholds = list(_LOOK_THRESHOLDS)

    @classmethod
    def from_config(
        cls, cfg: DetectorSettings, device: torch.device | str = "cpu"
    ) -> MTCNNDetector:
        """MTCNN as the ``detector`` settings describe it (:func:`build_mtcnn`).

        Kept for callers from before the detector registry; use
        :func:`deid.detect.build_detector`, which builds the detector ``cfg.name`` names.
        """
        return build_mtcnn(cfg, device)

    def searchable(self, height: int, width: int) -> bool:
        """Whether MTCNN can search an image of this size: its pyramid maps
        ``min_face_size`` px to the 12-px P-Net window, so an image whose shorter side is
        below ``min_face_size`` has no pyramid level (facenet-pytorch then fails on an empty
        ``torch.cat``) and cannot hold a face the detector looks for."""
        # facenet-pytorch's own test (detect_face: `while minl >= 12`), float for float
        return min(height, width) * (12.0 / self.min_face_size) >= 12

    def detect_single(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        """MTCNN on same-size images, unfiltered, as float32 arrays."""
        return _detect(self._mtcnn, images)

    def detect_look(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        """MTCNN on the second look's views: faces from 20 px (the box is enlarged to 48)."""
        return _detect(self._mtcnn_look, images)

    def detect_enlarged(
        self, images: Sequence[np.ndarray], originals: Sequence[np.ndarray] | None = None
    ) -> list[RawDetections]:
        """MTCNN on frames enlarged by ``upscale``: faces from ``min_face_size * upscale`` px;
        P-Net's pyramid from ``originals`` where given and ``pyramid`` is ``"frame"``."""
        source = originals if self.pyramid == "frame" else None
        return _detect(self._mtcnn_enlarged, images, source)


def build_mtcnn(cfg: DetectorSettings, device: torch.device | str = "cpu") -> MTCNNDetector:
    """The MTCNN detector a :class:`deid.config.DetectorConfig` describes (its registry entry)."""
    return MTCNNDetector(
        thresholds=cfg.thresholds,
        factor=cfg.factor,
        device=device,
        pyramid=cfg.pyramid,
        **tiling_options(cfg),
    )


def _detect(
    mtcnn: Any,
    images: Sequence[np.ndarray],
    pyramid_from: Sequence[np.ndarray] | None = None,
) -> list[RawDetections]:
    """facenet-pytorch's MTCNN stages, batched (:mod:`deid.detect.mtcnn_fast`)."""
    with torch.inference_mode():
        found = detect_faces(
            images,
            mtcnn.pnet,
            mtcnn.rnet,
            mtcnn.onet,
            mtcnn.min_face_size,
            mtcnn.thresholds,
            mtcnn.factor,
            mtcnn.device,
            pyramid_from=pyramid_from,
        )
    return [raw if len(raw[0]) else no_detections() for raw in found]
