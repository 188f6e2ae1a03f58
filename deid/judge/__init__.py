"""An independent judge of de-identification: dlib's ResNet face recognizer.

deid's attacks are made against deid's own classifiers, so those classifiers cannot say
whether a written face still identifies its person. The judge is a recognizer deid never
optimises against: dlib's ``dlib_face_recognition_resnet_model_v1`` (128-D descriptors,
99.38% on LFW; two faces are the same person when their descriptors are less than 0.6
apart), with the weights that ship in the PyPI package ``face_recognition_models`` 0.3.0.
Nothing is downloaded. Install it with ``pip install 'deid[judge]'``.

**Evaluator only.** No attack, generator, loss, training or protection code may import this
package (``tests/test_judge.py`` walks the import graph): a judge that an attack could see
would stop being independent.

Alignment: a face crop (as deid cuts it, or a dataset's aligned crop: the face fills most of
it) is handed to dlib's 5-point shape predictor with the crop's rectangle inset by
:data:`INSET` on every side (dlib's landmark model was trained on its HOG detector's boxes,
which are tighter than a crop; the inset raised clean verification on held-out CelebA from
81% to 97% at 64 px); dlib then cuts its own 150x150 chip from the five landmarks
(``compute_face_descriptor`` with padding 0.25) and describes it.

Example::

    from deid import judge

    if judge.available():
        j = judge.load_judge()
        d = j.descriptor(face)  # face: (H, W, 3) uint8 -> (128,) float32
        j.linked(d, j.descriptor(written_face))  # True: still the same person
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from deid.errors import DeidError

THRESHOLD = 0.6  # dlib's own: descriptors closer than this are the same person
DESCRIPTOR_DIM = 128
INSET = 0.15  # of the crop's side, on every side: where the landmark predictor looks
CHIP_PADDING = 0.25  # dlib's default context around the landmarks in its 150 px chip
INSTALL_HINT = "pip install 'deid[judge]'"
NAME = "dlib ResNet (face_recognition_models 0.3.0)"
MODEL_FILES = {
    "recognizer": "dlib_face_recognition_resnet_model_v1.dat",
    "landmarks": "shape_predictor_5_face_landmarks.dat",
}

__all__ = [
    "DESCRIPTOR_DIM",
    "INSTALL_HINT",
    "NAME",
    "THRESHOLD",
    "Judge",
    "JudgeMissingError",
    "available",
    "distance",
    "load_judge",
    "model_dir",
]


class JudgeMissingError(DeidError):
    """The judge's extra (dlib, face_recognition_models) is not installed."""


def model_dir() -> Path | None:
    """Where ``face_recognition_models`` keeps its ``.dat`` files, or None without it.

    The package is located without importing it: its ``__init__`` needs ``pkg_resources``,
    which recent setuptools no longer ship.
    """
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _missing() -> list[str]:
    """What the judge lacks: package names or model files (empty when it can run)."""
    missing = []
    if importlib.util.find_spec("dlib") is None:
        missing.append("dlib (dlib-bin)")
    d = model_dir()
    if d is None:
        missing.append("face_recognition_models")
    else:
        missing += [str(d / f) for f in MODEL_FILES.values() if not (d / f).is_file()]
    return missing


def available() -> bool:
    """Whether the judge can run here (``pip install 'deid[judge]'`` was done)."""
    return not _missing()


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Euclidean distance between descriptors: (128,) and (128,) -> float; (N, 128) and
    (128,) or (N, 128) -> (N,); (N, 128) and (M, 128) with ``[:, None]`` -> (N, M)."""
    d = np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32), axis=-1)
    return float(d) if np.ndim(d) == 0 else d


class Judge:
    """dlib's face recognizer: a descriptor per face crop, a distance and a threshold.

    Args:
        threshold: descriptors closer than this are the same person (dlib's 0.6).

    Raises:
        JudgeMissingError: the extra is not installed (the message names the install command).
    """

    def __init__(self, threshold: float = THRESHOLD) -> None:
        missing = _missing()
        if missing:
            raise JudgeMissingError(
                f"the face-recognition judge needs {', '.join(missing)}; install it with "
                f"{INSTALL_HINT}"
            )
        import dlib

        d = model_dir()
        assert d is not None  # _missing() checked it
        self.threshold = threshold
        self._dlib: Any = dlib
        self._landmarks = dlib.shape_predictor(str(d / MODEL_FILES["landmarks"]))
        self._recognizer = dlib.face_recognition_model_v1(str(d / MODEL_FILES["recognizer"]))

    def descriptor(self, face: np.ndarray) -> np.ndarray:
        """The 128-D descriptor of one face crop.

        Args:
            face: (H, W, 3) uint8 RGB (or (H, W) grey) crop in which the face fills most of
                the frame, as deid cuts faces; any size from about 16 px.

        Returns:
            (128,) float32.

        Raises:
            ValueError: not a uint8 (H, W) or (H, W, 3) image, or smaller than 8 px.
        """
        img = _rgb(face)
        h, w = img.shape[:2]
        rect = self._dlib.rectangle(
            round(INSET * w),
            round(INSET * h),
            round((1 - INSET) * w) - 1,
            round((1 - INSET) * h) - 1,
        )
        shape = self._landmarks(img, rect)
        v = self._recognizer.compute_face_descriptor(img, shape, 0, CHIP_PADDING)
        return np.asarray(v, np.float32)

    def descriptors(
        self, faces: Sequence[np.ndarray] | np.ndarray, workers: int | None = 1
    ) -> np.ndarray:
        """(N, 128) float32 descriptors of N face crops (see :meth:`descriptor`).

        Args:
            workers: processes that share the faces (dlib's network runs on one core and
                holds the GIL, so threads do not help): 1 (default) describes them here;
                ``None``: one per usable CPU. A list shorter than :data:`PARALLEL_MIN` a
                worker is described here; the descriptors are the same either way.
        """
        if not len(faces):
            return np.zeros((0, DESCRIPTOR_DIM), np.float32)
        n = _workers(workers, len(faces))
        if n > 1:
            parts = [[_rgb(f) for f in faces[i::n]] for i in range(n)]
            try:
                done = _map(parts)
            except (OSError, EOFError, pickle.UnpicklingError):  # a worker died: here
                pass
            else:
                out = np.empty((len(faces), DESCRIPTOR_DIM), np.float32)
                for i, d in enumerate(done):
                    out[i::n] = d
                return out
        return np.stack([self.descriptor(f) for f in faces])

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
        """Euclidean distance of descriptors (:func:`distance`)."""
        return distance(a, b)

    def linked(self, a: np.ndarray, b: np.ndarray) -> np.ndarray | bool:
        """Whether the judge takes descriptors ``a`` and ``b`` for the same person
        (distance < threshold); elementwise for arrays of descriptors."""
        d = distance(a, b)
        return bool(d < self.threshold) if isinstance(d, float) else d < self.threshold


@lru_cache(maxsize=1)
def load_judge() -> Judge:
    """The process's judge (the models load once, in about a second)."""
    return Judge()


#: Faces a worker must get at least for :meth:`Judge.descriptors` to use several processes
#: (a worker's first call loads the models, about a second).
PARALLEL_MIN = 8
_WORKERS: list[Any] = []
_WORKERS_PID = [0]  # the process that started them (a forked child starts its own)
_WORKERS_LOCK = threading.Lock()  # one batch at a time on the pipes
_AT_EXIT: list[Any] = []


def _workers(asked: int | None, faces: int) -> int:
    if asked is None:
        asked = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, min(asked, faces // PARALLEL_MIN))


def _map(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each part described by its own worker process, all at once.

    Workers are fresh interpreters (``python -m deid.judge.worker``) started on first use
    and kept for the process's life, so nothing of the caller (its ``__main__``, torch's
    threads) is copied or re-run; they talk over pipes. Daemonic processes (Celery's
    workers) may start them too, which multiprocessing forbids.
    """
    with _WORKERS_LOCK:
        return _map_locked(parts)


def _map_locked(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    if _WORKERS and _WORKERS_PID[0] != os.getpid():
        _WORKERS.clear()  # the parent's, inherited by fork: theirs to use and close
    _WORKERS_PID[0] = os.getpid()
    while len(_WORKERS) < len(parts):
        _WORKERS.append(
            subprocess.Popen(
                [sys.executable, "-m", "deid.judge.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        )
        if not _AT_EXIT:
            _AT_EXIT.append(atexit.register(_close_workers))
    try:
        for w, part in zip(_WORKERS, parts, strict=False):
            pickle.dump(part, w.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            w.stdin.flush()
        out = [pickle.load(w.stdout) for w, _ in zip(_WORKERS, parts, strict=False)]
    except (OSError, EOFError, pickle.UnpicklingError):
        _close_workers()
        raise
    for d in out:
        if isinstance(d, BaseException):  # the worker's own error, raised here
            raise d
    return out


def _close_workers() -> None:
    if _WORKERS_PID[0] != os.getpid():
        _WORKERS.clear()
        return
    for w in _WORKERS:
        with contextlib.suppress(OSError):
            w.stdin.close()
        try:
            w.wait(timeout=5)
        except subprocess.TimeoutExpired:
            w.kill()
    _WORKERS.clear()


def _rgb(face: np.ndarray) -> np.ndarray:
    a = np.asarray(face)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3)):
        raise ValueError(f"face: expected (H, W) or (H, W, 3) uint8, got {a.shape} {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if min(a.shape[:2]) < 8:
        raise ValueError(f"face: {a.shape[1]}x{a.shape[0]} px is too small to judge (< 8 px)")
    return np.ascontiguousarray(a)
