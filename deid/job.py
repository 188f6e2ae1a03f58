"""A video job as steps with JSON-able inputs and outputs: split, analyse, plan, render, assemble.

``deid run`` runs these steps in-process; the service runs the same steps as Celery tasks
(analyse and render chunks in parallel on any worker). Same input, settings and chunk size
give the same bytes either way, because every step is a pure function of its JSON inputs:

1. :func:`split` reads the frame table (exact timestamps) and cuts ``[start, stop)`` chunks;
2. :func:`analyse` detects and classifies the faces of one chunk;
3. :func:`plan` tracks faces over the *whole* video (so chunk boundaries cannot break a
   track), fills detection gaps and fixes one target identity per track;
4. :func:`render` attacks and pastes the chunk's faces, encodes an H.264 segment with the
   input's timestamps, re-reads it, verifies every face and obscures any still recognised
   (fail closed), then moves the segment into place atomically;
5. :func:`assemble` joins the segments without re-encoding, copies the input's audio, and
   merges the chunk reports.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deid.align import face_crop, obscure, paste_back
from deid.errors import OutputError
from deid.io import (
    REPRODUCIBLE_X264,
    WRITABLE_VIDEO_FORMATS,
    FrameTable,
    VideoWriter,
    concat_videos,
    frame_table,
    iter_batches,
    probe_video,
    read_frames,
    read_range,
    tmp_beside,
    writing,
)
from deid.pipeline import (
    Resources,
    Timer,
    _needs_repair,
    attack_faces,
    classify,
    crop,
    detect,
    face_totals,
    report_header,
    verify_frames,
)
from deid.tracking import plan_tracks
from deid.types import FaceCrop

log = logging.getLogger(__name__)

# Encoder threads of segments: fixed so the bytes do not depend on the machine's core count.
SEGMENT_THREADS = 2


@dataclass(frozen=True)
class Chunk:
    """Frames ``start .. stop-1`` (presentation order) of a job's input."""

    index: int
    start: int
    stop: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        return cls(int(d["index"]), int(d["start"]), int(d["stop"]))

    @property
    def frames(self) -> int:
        return self.stop - self.start


def _json(x: Any) -> Any:
    """What ``x`` becomes after a trip through JSON (the service ships every step's output
    through Redis; the embedded run does the same trip so both compute on equal inputs)."""
    return json.loads(json.dumps(x))


def _table(layout: dict[str, Any]) -> FrameTable | None:
    """The frame table to seek with (None: decode from the start and count)."""
    if not layout.get("seekable", True):
        return None
    return FrameTable(Fraction(layout["time_base"]), list(layout["pts"]))


def chunks_of(layout: dict[str, Any]) -> list[Chunk]:
    return [Chunk.from_dict(c) for c in layout["chunks"]]


# --------------------------------------------------------------------------------------------
# 1. split
# --------------------------------------------------------------------------------------------
def split(input: Path | str, chunk_frames: int) -> dict[str, Any]:
    """Probe ``input`` and cut it into chunks of ``chunk_frames`` frames.

    Returns:
        the job's layout (JSON-able): size, exact rate and time base, the timestamp of every
        frame, rotation, audio, and ``chunks`` (dicts of :class:`Chunk`).
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames: expected >= 1, got {chunk_frames}")
    input = Path(input)
    info = probe_video(input)
    table = frame_table(input)
    seekable = bool(table.pts)
    n = len(table.pts) if seekable else info.frame_count
    if not seekable:  # no timestamps in the container: frames are counted, spaced 1 / fps
        table = FrameTable(1 / info.rate, list(range(n)))
    chunks = [
        Chunk(i, s, min(s + chunk_frames, n)) for i, s in enumerate(range(0, n, chunk_frames))
    ]
    return _json(
        {
            "input": str(input),
            "width": info.width,
            "height": info.height,
            "rate": str(info.rate),
            "fps": info.fps,
            "duration": info.duration,
            "time_base": str(table.time_base),
            "pts": table.pts,
            "seekable": seekable,
            "frames": n,
            "rotation": info.rotation,
            "has_audio": info.has_audio,
            "chunks": [c.to_dict() for c in chunks],
        }
    )


def _frames(input: Path, layout: dict[str, Any], chunk: Chunk) -> list[tuple[int, np.ndarray]]:
    return list(read_range(input, chunk.start, chunk.stop, _table(layout)))


# --------------------------------------------------------------------------------------------
# 2. analyse
# --------------------------------------------------------------------------------------------
def analyse(
    input: Path | str,
    layout: dict[str, Any],
    chunk: Chunk,
    res: Resources,
    on_frames: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Detect and classify the faces of one chunk (``on_frames(n)`` after each batch).

    Returns:
        ``{"chunk": index, "start": first frame, "faces": [[face, ...] per frame],
        "seconds": {...}}``, each face ``{"box", "score", "landmarks", "logits"}``.
    """
    timer = Timer()
    faces: list[list[dict[str, Any]]] = []
    batch_frames = res.settings.detector.batch_frames
    with timer("decode"):
        frames = [f for _, f in _frames(Path(input), layout, chunk)]
    for batch in iter_batches(frames, batch_frames):
        with timer("detect"):
            dets = detect(res.detector, batch)
        with timer("classify"):
            crops = crop(batch, dets, res.classifier)
            logits = (
                classify(res.classifier, crops, res.device)
                if crops
                else torch.zeros((0, res.classifier.num_classes))
            )
        per_frame: list[list[dict[str, Any]]] = [[] for _ in batch]
        for c, lg in zip(crops, logits, strict=True):
            d = dets[c.frame]
            per_frame[c.frame].append(
                {
                    "box": [round(float(v), 2) for v in d.boxes[c.face]],
                    "score": round(float(d.scores[c.face]), 4),
                    # the landmarks the crop was aligned with (box-based when MTCNN's are
                    # unusable, e.g. on profiles)
                    "landmarks": np.round(np.asarray(c.extra["landmarks"], np.float64), 2).tolist(),
                    "logits": [round(float(v), 4) for v in lg],
                }
            )
        faces.extend(per_frame)
        if on_frames is not None:
            on_frames(len(batch))
    return _json(
        {
            "chunk": chunk.index,
            "start": chunk.start,
            "faces": faces,
            "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
        }
    )


# --------------------------------------------------------------------------------------------
# 3. plan
# --------------------------------------------------------------------------------------------
def plan(
    layout: dict[str, Any], analyses: Sequence[dict[str, Any]], res: Resources
) -> dict[str, Any]:
    """Track faces over the whole video and give every track one target (see deid.tracking)."""
    analyses = sorted(analyses, key=lambda a: a["start"])
    faces: list[list[dict[str, Any]]] = []
    for a in analyses:
        if a["start"] != len(faces):
            raise ValueError(f"analyses: chunk starting at {a['start']} follows frame {len(faces)}")
        faces.extend(a["faces"])
    if len(faces) != layout["frames"]:
        raise ValueError(f"analyses cover {len(faces)} of {layout['frames']} frames")
    t = res.settings.tracking
    out = plan_tracks(
        faces,
        layout["width"],
        layout["height"],
        res.target_mode,
        res.classifier.num_classes,
        seed=res.settings.pipeline.seed,
        iou_threshold=t.iou,
        max_gap=t.max_gap,
        extend=t.extend,
    )
    return _json(out)


# --------------------------------------------------------------------------------------------
# 4. render
# --------------------------------------------------------------------------------------------
def _grown_box_crop(frame_shape: tuple[int, ...], box: Sequence[float], margin: float) -> FaceCrop:
    """A rectangular pseudo-crop covering ``box`` grown by ``margin`` of its size per side."""
    fh, fw = frame_shape[:2]
    x1, y1, x2, y2 = box
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    r = (
        int(max(0, math.floor(x1 - mx))),
        int(max(0, math.floor(y1 - my))),
        int(min(fw, math.ceil(x2 + mx))),
        int(min(fh, math.ceil(y2 + my))),
    )
    r = (r[0], r[1], max(r[2], r[0] + 1), max(r[3], r[1] + 1))
    corners = np.array([[r[0], r[1]], [r[2], r[1]], [r[0], r[3]], [r[2], r[3]]], np.float32)
    return FaceCrop(
        -1,
        -1,
        r,
        np.zeros(0),
        np.eye(2, 3, dtype=np.float32),
        np.asarray(box),
        extra={"corners": corners},
    )


def _compose(
    frame: np.ndarray, recs: Sequence[dict[str, Any]], pixels: dict[int, np.ndarray], res: Resources
) -> np.ndarray:
    """The output frame: each face's adversarial pixels pasted, or the face obscured."""
    out = frame.copy()
    mode = res.settings.pipeline.fallback
    for r in recs:
        c = _rec_crop(r, out)
        if r["action"] == "attacked":
            paste_back(out, c, pixels[r["_id"]])
        else:
            obscure(out, c, mode)
            obscure(out, _grown_box_crop(out.shape, r["box"], res.settings.tracking.margin), mode)
    return out


def _rec_crop(r: dict[str, Any], frame: np.ndarray) -> FaceCrop:
    x1, y1, x2, y2 = r["region"]
    return FaceCrop(
        frame=0,
        face=0,
        region=(x1, y1, x2, y2),
        pixels=frame[y1:y2, x1:x2].copy(),
        theta=np.asarray(r["_theta"], np.float32),
        box=np.asarray(r["box"], np.float32),
        extra={"corners": np.asarray(r["_corners"], np.float32)},
    )


def segment_report_path(segment: Path) -> Path:
    return segment.with_name(segment.name + ".json")


def chunk_ok(out: Path | str, chunk: Chunk) -> bool:
    """Whether a chunk's segment and report are complete (a redelivered chunk can skip)."""
    out = Path(out)
    rp = segment_report_path(out)
    if not (out.is_file() and rp.is_file()):
        return False
    try:
        rep = json.loads(rp.read_text())
        return rep.get("chunk") == chunk.to_dict() and probe_video(out).frame_count == chunk.frames
    except (OSError, ValueError, Exception):  # noqa: BLE001 (any unreadable file: redo it)
        return False


def _writer(path: Path, layout: dict[str, Any], crf: int) -> VideoWriter:
    return VideoWriter(
        path,
        Fraction(layout["rate"]),
        layout["width"],
        layout["height"],
        crf=crf,
        time_base=Fraction(layout["time_base"]),
        threads=SEGMENT_THREADS,
        x264_params=REPRODUCIBLE_X264,
    )


def _indexed(
    input: Path, layout: dict[str, Any], chunk: Chunk
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(frame index, pts or None, frame) of the chunk's frames."""
    pts = layout["pts"]
    for i, (_, frame) in enumerate(read_range(input, chunk.start, chunk.stop, _table(layout))):
        yield chunk.start + i, pts[chunk.start + i], frame


def _attack_batch(
    batch: Sequence[tuple[int, int, np.ndarray]],
    plan: dict[str, Any],
    res: Resources,
    records: list[dict[str, Any]],
    pixels: dict[int, np.ndarray],
    timer: Timer,
) -> dict[int, list[dict[str, Any]]]:
    """Attack the planned faces of a batch of frames; returns their records by frame."""
    p = res.settings.pipeline
    names = res.classifier.meta.class_names
    template = np.asarray(res.classifier.meta.template)
    out_hw = tuple(res.classifier.meta.input_size)
    planned: list[tuple[int, dict[str, Any]]] = []
    crops: list[FaceCrop] = []
    for k, (fi, _, frame) in enumerate(batch):
        for face in plan["frames"][fi]:
            region, theta, corners = face_crop(
                frame.shape, np.asarray(face["landmarks"]), template, out_hw
            )
            x1, y1, x2, y2 = region
            crops.append(
                FaceCrop(
                    frame=k,
                    face=len(crops),
                    region=region,
                    pixels=frame[y1:y2, x1:x2].copy(),
                    theta=theta,
                    box=np.asarray(face["box"], np.float32),
                    score=float(face["score"]),
                    track=int(face["track"]),
                    extra={"corners": corners},
                )
            )
            planned.append((fi, face))
    by_frame: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if not crops:
        return by_frame
    with timer("attack"):
        outcomes = attack_faces(
            res.attack,
            res.classifier,
            crops,
            torch.tensor([f["target"] for _, f in planned]),
            torch.tensor([f["pred"] for _, f in planned]),
            res.device,
            res.settings.attack.batch_size,
        )
    for (fi, face), c, o in zip(planned, crops, outcomes, strict=True):
        rid = len(records)
        pixels[rid] = o.pixels
        rec = {
            "frame": fi,
            "track": face["track"],
            "kind": face["kind"],
            "box": face["box"],
            "region": list(c.region),
            "score": face["score"],
            "pred": names[face["pred"]],
            "pred_conf": face["pred_conf"],
            **o.record(names, p.fallback),
            "_id": rid,
            "_theta": c.theta.tolist(),
            "_corners": c.extra["corners"].tolist(),
        }
        records.append(rec)
        by_frame[fi].append(rec)
    return by_frame


def render(
    input: Path | str,
    layout: dict[str, Any],
    plan: dict[str, Any],
    chunk: Chunk,
    res: Resources,
    out: Path | str,
    thumbnails: list[dict[str, Any]] | None = None,
    max_thumbnails: int = 24,
    on_frames: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Attack, paste, encode, verify and repair one chunk; the segment lands at ``out``
    (``on_frames(n)`` after each batch is encoded).

    ``out`` (an H.264 segment, ``.mp4`` or ``.mkv``) and its report ``out.json`` are written
    atomically, report first, so :func:`chunk_ok` never sees a half-done chunk. Faces whose
    attack failed, or that the re-read segment still shows as themselves, are obscured
    (fail closed); the repaired segment is encoded again from the input, not from the
    first encoding.

    Returns:
        the chunk report (JSON-able): ``chunk``, ``faces`` (one record per planned face),
        ``coverage``, ``seconds``.
    """
    input, out = Path(input), Path(out)
    if out.suffix.lower() not in WRITABLE_VIDEO_FORMATS:
        raise OutputError(out, f"expected a segment suffix in {sorted(WRITABLE_VIDEO_FORMATS)}")
    timer = Timer()
    p = res.settings.pipeline
    records: list[dict[str, Any]] = []
    pixels: dict[int, np.ndarray] = {}
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    torch.manual_seed(p.seed * 1_000_003 + chunk.start)
    first = tmp_beside(out, "pass1")
    final = first
    try:
        with _writer(first, layout, p.crf) as writer:
            for batch in iter_batches(
                _indexed(input, layout, chunk), res.settings.detector.batch_frames
            ):
                by_frame = _attack_batch(batch, plan, res, records, pixels, timer)
                grouped.update(by_frame)
                with timer("encode"):
                    for fi, pts, frame in batch:
                        composed = _compose(frame, by_frame.get(fi, []), pixels, res)
                        writer.write(composed, pts=pts)
                        if thumbnails is not None:
                            _thumbs(
                                thumbnails, max_thumbnails, by_frame.get(fi, []), frame, composed
                            )
                if on_frames is not None:
                    on_frames(len(batch))
        repaired = 0
        if p.verify and records:
            with timer("verify"):
                for start, batch in _numbered(
                    read_frames(first), res.settings.detector.batch_frames, chunk.start
                ):
                    recs = [
                        r for fi in range(start, start + len(batch)) for r in grouped.get(fi, [])
                    ]
                    if recs:
                        verify_frames(batch, recs, res, start)
            if p.repair and any(_needs_repair(r) for r in records):
                for r in records:
                    if _needs_repair(r):
                        r["action"] = f"repaired:{p.fallback}"
                        repaired += 1
                final = tmp_beside(out, "repair")
                with timer("repair"), _writer(final, layout, p.crf) as w2:
                    for fi, pts, frame in _indexed(input, layout, chunk):
                        w2.write(_compose(frame, grouped.get(fi, []), pixels, res), pts=pts)
        report = _chunk_report(chunk, plan, records, timer, repaired)
        rp = segment_report_path(out)
        tmp = tmp_beside(rp)
        tmp.write_text(json.dumps(report) + "\n")
        tmp.replace(rp)
        final.replace(out)
    finally:
        first.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
    return report


def _thumbs(
    thumbnails: list[dict[str, Any]],
    limit: int,
    recs: Sequence[dict[str, Any]],
    frame: np.ndarray,
    composed: np.ndarray,
) -> None:
    for r in recs:
        if len(thumbnails) < limit and r["kind"] == "detected":
            x1, y1, x2, y2 = r["region"]
            thumbnails.append(
                {**r, "before": frame[y1:y2, x1:x2].copy(), "after": composed[y1:y2, x1:x2].copy()}
            )


def _numbered(
    frames: Iterator[np.ndarray], n: int, first: int
) -> Iterator[tuple[int, list[np.ndarray]]]:
    start = first
    for batch in iter_batches(frames, n):
        yield start, batch
        start += len(batch)


def _protected(r: dict[str, Any]) -> bool:
    """Obscured, or attacked and not recognised as itself in the written file (or, without
    verification, attacked successfully)."""
    if r["action"] != "attacked":
        return True
    v = r.get("verified")
    return bool(r["success"]) if v is None else not v["is_original"]


def _chunk_report(
    chunk: Chunk,
    plan: dict[str, Any],
    records: list[dict[str, Any]],
    timer: Timer,
    repaired: int,
) -> dict[str, Any]:
    planned = [len(plan["frames"][fi]) for fi in range(chunk.start, chunk.stop)]
    protected = [0] * chunk.frames
    for r in records:
        protected[r["frame"] - chunk.start] += _protected(r)
    return _json(
        {
            "chunk": chunk.to_dict(),
            "faces": [{k: v for k, v in r.items() if not k.startswith("_")} for r in records],
            "coverage": {"faces": planned, "protected": protected},
            "repaired": repaired,
            "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
        }
    )


# --------------------------------------------------------------------------------------------
# 5. assemble
# --------------------------------------------------------------------------------------------
def assemble(
    input: Path | str,
    layout: dict[str, Any],
    parts: Sequence[Path | str],
    output: Path | str,
    reports: Sequence[dict[str, Any]],
    res: Resources,
    plan: dict[str, Any] | None = None,
    analyses: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Join the segments in order (no re-encode) with the input's audio, atomically; check the
    frame count; return the job's report (without writing it)."""
    input, output = Path(input), Path(output)
    order = sorted(range(len(reports)), key=lambda i: reports[i]["chunk"]["start"])
    parts = [Path(parts[i]) for i in order]
    reports = [reports[i] for i in order]
    concat_videos(
        parts,
        output,
        audio_from=input if layout["has_audio"] else None,
        rotation=layout["rotation"],
    )
    info = probe_video(output)
    if info.frame_count != layout["frames"]:
        output.unlink(missing_ok=True)
        raise OutputError(
            output, f"joined {info.frame_count} frames; expected {layout['frames']} (removed it)"
        )
    return job_report(input, output, layout, reports, res, plan, analyses, info)


def _too_small(layout: dict[str, Any], res: Resources) -> bool:
    """Whether the video's frames are too small for the detector (no face can be found)."""
    return res.detector.too_small((layout["height"], layout["width"]))


def job_report(
    input: Path,
    output: Path,
    layout: dict[str, Any],
    reports: Sequence[dict[str, Any]],
    res: Resources,
    plan: dict[str, Any] | None,
    analyses: Sequence[dict[str, Any]],
    out_info: Any,
) -> dict[str, Any]:
    faces = [f for r in reports for f in r["faces"]]
    cov_faces = [n for r in reports for n in r["coverage"]["faces"]]
    cov_prot = [n for r in reports for n in r["coverage"]["protected"]]
    verified = [f for f in faces if "verified" in f]
    seconds: dict[str, float] = defaultdict(float)
    for r in [*analyses, *reports]:
        for k, v in r.get("seconds", {}).items():
            seconds[k] += v
    by_track: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for f in faces:
        by_track[f["track"]].append(f)
    tracks = []
    for t in (plan or {}).get("tracks", []):
        fs = by_track.get(t["id"], [])
        tracks.append(
            {
                **t,
                "pred": res.classifier.meta.class_names[t["pred"]],
                "target": res.classifier.meta.class_names[t["target"]],
                "targets_used": sorted({f["target"] for f in fs}),
                "attacked": sum(f["action"] == "attacked" for f in fs),
                "obscured": sum(f["action"] != "attacked" for f in fs),
                "verified_target": sum(bool(f.get("verified", {}).get("is_target")) for f in fs),
            }
        )
    deid_rate = (
        round(sum(not f["verified"]["is_original"] for f in verified) / len(verified), 4)
        if verified
        else None
    )
    totals = {
        "frames": layout["frames"],
        "frames_with_faces": sum(n > 0 for n in cov_faces),
        "frames_without_faces": sum(n == 0 for n in cov_faces),
        "frames_too_small": layout["frames"] if _too_small(layout, res) else 0,
        **face_totals(faces),
        "faces_detected": sum(f["kind"] == "detected" for f in faces),
        "faces_interpolated": sum(f["kind"] == "interpolated" for f in faces),
        "faces_extrapolated": sum(f["kind"] == "extrapolated" for f in faces),
        "tracks": len(tracks),
        "deidentified_on_output_rate": deid_rate,
        "repaired": sum(r["repaired"] for r in reports),
        "unprotected_faces": sum(not _protected(f) for f in faces),
        "frames_with_unprotected_face": sum(
            p < n for p, n in zip(cov_prot, cov_faces, strict=True)
        ),
        "target_changes_within_tracks": sum(max(0, len(t["targets_used"]) - 1) for t in tracks),
    }
    return {
        **report_header("video", input, output, res),
        "totals": totals,
        "video": {
            "fps_in": layout["fps"],
            "fps_out": out_info.fps,
            "frames_in": layout["frames"],
            "frames_out": out_info.frame_count,
            "duration_in": layout["duration"],
            "duration_out": out_info.duration,
            "width": layout["width"],
            "height": layout["height"],
            "rotation": layout["rotation"],
            "audio_in": layout["has_audio"],
            "audio_out": out_info.has_audio,
            "crf": res.settings.pipeline.crf,
            "chunks": len(layout["chunks"]),
        },
        "coverage": {"faces": cov_faces, "protected": cov_prot},
        "tracks": tracks,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "faces_detail": faces,
    }


# --------------------------------------------------------------------------------------------
# embedded driver
# --------------------------------------------------------------------------------------------
def segment_suffix(output: Path) -> str:
    return ".mkv" if output.suffix.lower() == ".mkv" else ".mp4"


def _bar(step: str, input: Path, layout: dict[str, Any], progress: bool) -> tqdm:
    """A progress bar over the video's frames for one step (``analyse``, ``render``)."""
    return tqdm(
        total=layout["frames"], desc=f"{step} {input.name}", unit="frame", disable=not progress
    )


def run_video(
    input: Path | str,
    output: Path | str,
    res: Resources,
    chunk_frames: int | None = None,
    progress: bool = True,
    thumbnails: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """De-identify a video in-process with the job's steps; returns the report (not written).

    Segments go to a hidden work folder beside ``output`` that is removed at the end,
    whatever happens; ``output`` appears only complete.
    """
    input, output = Path(input), Path(output)
    if output.suffix.lower() not in WRITABLE_VIDEO_FORMATS:
        raise OutputError(
            output, f"expected a video output ({', '.join(sorted(WRITABLE_VIDEO_FORMATS))})"
        )
    layout = split(input, chunk_frames or res.settings.pipeline.chunk_frames)
    chunks = chunks_of(layout)
    if _too_small(layout, res):
        log.warning(
            "%s: frames of %dx%d are too small for the detector (shorter side under "
            "detector.min_face_size, %d px): no face can be found in them; passed through",
            input,
            layout["width"],
            layout["height"],
            res.settings.detector.min_face_size,
        )
    with writing(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{output.name}.parts-", dir=output.parent))
    try:
        # one bar per pass: each counts every frame once, and its ETA is its own pass's speed
        # (analysis is several times faster than the attack)
        with _bar("analyse", input, layout, progress) as bar:
            analyses = [analyse(input, layout, c, res, on_frames=bar.update) for c in chunks]
        the_plan = plan(layout, analyses, res)
        parts, reports = [], []
        with _bar("render", input, layout, progress) as bar:
            for c in chunks:
                part = work / f"{c.index:05d}{segment_suffix(output)}"
                reports.append(
                    _json(
                        render(
                            input, layout, the_plan, c, res, part, thumbnails, on_frames=bar.update
                        )
                    )
                )
                parts.append(part)
        return assemble(input, layout, parts, output, reports, res, the_plan, analyses)
    finally:
        shutil.rmtree(work, ignore_errors=True)
