"""Face detectors. Each returns :class:`deid.types.Detections` per frame, never None."""

from deid.detect.mtcnn import MTCNNDetector

__all__ = ["MTCNNDetector"]
