"""Face detectors behind one seam (:class:`Detector`), built by name from the settings
(:func:`build_detector`). Each returns :class:`deid.types.Detections` per frame, never None."""

from deid.detect.base import Detector
from deid.detect.mtcnn import MTCNNDetector
from deid.detect.registry import DETECTORS, DetectorFactory, build_detector, register_detector
from deid.detect.tiling import RawDetections, TiledDetector, no_detections, tile_grid

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorFactory",
    "MTCNNDetector",
    "RawDetections",
    "TiledDetector",
    "build_detector",
    "no_detections",
    "register_detector",
    "tile_grid",
]
