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

Each step takes and returns its artefacts in their JSON form (the models of
:mod:`deid.pipeline.report`: :class:`Layout`, :class:`Analysis`, :class:`Plan`,
:class:`ChunkReport`, :class:`RunReport`), which is what the service stores and ships.
:func:`run_video` runs them in-process in the order of :data:`VIDEO_STEPS`; rendering a chunk
runs :data:`RENDER_STEPS`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deid.align import face_crop, obscure, paste_owned
from deid.errors import OutputError
from deid.io import (
    REPRODUCIBLE_X264,
    WRITABLE_VIDEO_FORMATS,
    FrameTable,
    VideoInfo,
    VideoWriter,
    as_stored,
    concat_videos,
    field_frame,
    frame_table,
    iter_batches,
    probe_video,
    read_frames,
    read_range,
    shown_size,
    tmp_beside,
    upright,
    writing,
)
from deid.pipeline.keyframes import KeyframeDetector
from deid.pipeline.pool import ChunkPool, pool_size
from deid.pipeline.report import (
    AnalysedFace,
    Analysis,
    Chunk,
    ChunkReport,
    Coverage,
    FaceRecord,
    Layout,
    Plan,
    PlannedFace,
    RunReport,
    Totals,
    TrackPlan,
    TrackReport,
    VideoSummary,
    face_totals,
    judge_totals,
)
from deid.pipeline.resources import Resources
from deid.pipeline.stages import classify, crop, detect
from deid.pipeline.steps import Step, Timer, run_steps
from deid.pipeline.tracking import plan_tracks
from deid.pipeline.verify import (
    check_judge,
    describe_originals,
    is_strict,
    judge_sample,
    judge_status,
    judge_summary,
    judge_written,
    judges_final_only,
    mark_repairs,
    needs_repair,
    obscured_with,
    record_crop,
    verify_frames,
)
from deid.types import FaceCrop

log = logging.getLogger(__name__)

# Encoder threads of segments: fixed so the bytes do not depend on the machine's core count.
SEGMENT_THREADS = 2
MAX_THUMBNAILS = 24  # faces a run keeps for its contact sheet


def _table(layout: Layout) -> FrameTable | None:
    """The frame table to seek with (None: decode from the start and count)."""
    if not layout.seekable:
        return None
    return FrameTable(Fraction(layout.time_base), list(layout.pts))


def chunks_of(layout: Layout | dict[str, Any]) -> list[Chunk]:
    return list(Layout.of(layout).chunks)


# --------------------------------------------------------------------------------------------
# 1. split
# --------------------------------------------------------------------------------------------
def split(input: Path | str, chunk_frames: int) -> dict[str, Any]:
    """Probe ``input`` and cut it into chunks of ``chunk_frames`` frames.

    Returns:
        the job's :class:`Layout` (JSON form): size, exact rate and time base, the timestamp
        of every frame, rotation, audio, and the chunks.
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
        Chunk(index=i, start=s, stop=min(s + chunk_frames, n))
        for i, s in enumerate(range(0, n, chunk_frames))
    ]
    return Layout(
        input=str(input),
        width=info.width,
        height=info.height,
        rate=str(info.rate),
        fps=info.fps,
        duration=info.duration,
        time_base=str(table.time_base),
        pts=table.pts,
        seekable=seekable,
        frames=n,
        rotation=info.rotation,
        has_audio=info.has_audio,
        chunks=chunks,
        colour=list(info.colour),
        sample_aspect=None if info.sample_aspect is None else str(info.sample_aspect),
        interlaced=info.interlaced,
    ).wire()


def _frames(input: Path, layout: Layout, chunk: Chunk, timer: Timer) -> Iterator[np.ndarray]:
    """The chunk's frames for analysis, upright (as players show them: a portrait video is
    stored sideways, and faces are searched the right way up) and, of an interlaced video,
    one field (:func:`deid.io.video.field_frame`), decoded one at a time as they are taken
    (decoding timed)."""
    it = read_range(input, chunk.start, chunk.stop, _table(layout))
    while True:
        with timer("decode"):
            item = next(it, None)
            frame = None if item is None else upright(item[1], layout.rotation)
            if frame is not None and layout.interlaced:  # faces whole, not combed
                frame = field_frame(frame)
        if frame is None:
            return
        yield frame


# --------------------------------------------------------------------------------------------
# 2. analyse
# --------------------------------------------------------------------------------------------
def analyse(
    input: Path | str,
    layout: Layout | dict[str, Any],
    chunk: Chunk,
    res: Resources,
    on_frames: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Detect and classify the faces of one chunk (``on_frames(n)`` after each batch).

    With ``detector.keyframe_interval`` > 1 the chunk's frames are detected first, all at
    once (:meth:`KeyframeDetector.detect_chunk` also searches backwards), then classified
    batch by batch.

    Returns:
        the chunk's :class:`Analysis` (JSON form): per frame its faces, each with box, score,
        landmarks and logits.
    """
    layout = Layout.of(layout)
    timer = Timer()
    faces: list[list[AnalysedFace]] = []
    batch_frames = res.settings.detector.batch_frames
    # keyframes counted from the chunk's first frame: each chunk is analysed on its own
    # faces down to detector.track_score: the plan keeps the weaker ones in confirmed tracks
    detector = KeyframeDetector(
        res.track_detector,
        res.settings.detector.keyframe_interval,
        follow_score=res.settings.detector.min_score,
    )
    frames: Iterator[np.ndarray] = _frames(Path(input), layout, chunk, timer)
    chunk_dets = None
    if detector.interval > 1:  # faces are also looked for backwards: the chunk at once
        held = list(frames)  # (the chunk's frames in memory: keyframes only)
        with timer("detect"):
            chunk_dets = detector.detect_chunk(held)
        frames = iter(held)
    # otherwise frames are decoded batch by batch: no pass holds a chunk
    for start, batch in _numbered(frames, batch_frames, 0):
        with timer("detect"):
            dets = (
                detect(detector, batch)  # (then the freed pyramid leaves: deid.heap)
                if chunk_dets is None
                else chunk_dets[start : start + len(batch)]
            )
        with timer("classify"):
            crops = crop(batch, dets, res.classifier)
            logits = (
                classify(res.classifier, crops, res.device)
                if crops
                else torch.zeros((0, res.classifier.num_classes))
            )
        per_frame: list[list[AnalysedFace]] = [[] for _ in batch]
        for c, lg in zip(crops, logits, strict=True):
            d = dets[c.frame]
            per_frame[c.frame].append(
                AnalysedFace(
                    box=[round(float(v), 2) for v in d.boxes[c.face]],
                    score=round(float(d.scores[c.face]), 4),
                    # the landmarks the crop was aligned with (box-based when the detector's
                    # are unusable, e.g. on profiles)
                    landmarks=np.round(np.asarray(c.extra["landmarks"], np.float64), 2).tolist(),
                    logits=[round(float(v), 4) for v in lg],
                )
            )
        faces.extend(per_frame)
        if on_frames is not None:
            on_frames(len(batch))
    log.debug("chunk %d: detection %s", chunk.index, detector.stats.as_dict())
    return Analysis(
        chunk=chunk.index, start=chunk.start, faces=faces, seconds=timer.rounded()
    ).wire()


# --------------------------------------------------------------------------------------------
# 3. plan
# --------------------------------------------------------------------------------------------
def plan(
    layout: Layout | dict[str, Any],
    analyses: Sequence[Analysis | dict[str, Any]],
    res: Resources,
) -> dict[str, Any]:
    """Track faces over the whole video and give every track one target (see
    :mod:`deid.pipeline.tracking`). Returns the :class:`Plan` (JSON form)."""
    layout = Layout.of(layout)
    ordered = sorted((Analysis.of(a) for a in analyses), key=lambda a: a.start)
    faces: list[list[dict[str, Any]]] = []
    for a in ordered:
        if a.start != len(faces):
            raise ValueError(f"analyses: chunk starting at {a.start} follows frame {len(faces)}")
        faces.extend(a.wire()["faces"])
    if len(faces) != layout.frames:
        raise ValueError(f"analyses cover {len(faces)} of {layout.frames} frames")
    t = res.settings.tracking
    out = plan_tracks(
        faces,
        *shown_size(layout.width, layout.height, layout.rotation),
        res.target_mode,
        res.classifier.num_classes,
        seed=res.settings.pipeline.seed,
        iou_threshold=t.iou,
        max_gap=t.max_gap,
        extend=t.extend,
        min_score=res.settings.detector.min_score,
    )
    return Plan.model_validate(out).wire()


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
    frame: np.ndarray, recs: Sequence[FaceRecord], pixels: dict[int, np.ndarray], res: Resources
) -> np.ndarray:
    """The output frame: each face's protected pixels pasted (each face's own part of its
    crop where crops overlap: :func:`~deid.align.owned_masks`), then the faces that are not
    attacked obscured (last, so that no paste undoes them)."""
    out = frame.copy()
    mode = res.settings.pipeline.fallback
    pasted = [r for r in recs if r.attacked]
    paste_owned([out], [record_crop(r, frame) for r in pasted], [pixels[r.rid] for r in pasted])
    for r in recs:
        if not r.attacked:
            how = obscured_with(r, mode)
            obscure(out, record_crop(r, out), how)
            obscure(out, _grown_box_crop(out.shape, r.box, res.settings.tracking.margin), how)
    return out


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


def _writer(path: Path, layout: Layout | Mapping[str, Any], crf: int) -> VideoWriter:
    """The encoder of a segment: the input's exact rate, time base, colour, pixel shape and
    field order, reproducible bytes (a layout in JSON form may lack the newer keys: BT.601,
    square pixels, progressive)."""

    def get(key: str) -> Any:
        return layout.get(key) if isinstance(layout, Mapping) else getattr(layout, key)

    sar = get("sample_aspect")
    return VideoWriter(
        path,
        Fraction(get("rate")),
        get("width"),
        get("height"),
        crf=crf,
        time_base=Fraction(get("time_base")),
        threads=SEGMENT_THREADS,
        x264_params=REPRODUCIBLE_X264,
        colour=get("colour"),
        sample_aspect=None if sar is None else Fraction(sar),
        interlaced=get("interlaced"),
    )


def _indexed(input: Path, layout: Layout, chunk: Chunk) -> Iterator[tuple[int, int, np.ndarray]]:
    """(frame index, pts or None, frame) of the chunk's frames, upright (boxes, plans and
    reports are in the frame as players show it; :func:`_write` turns it back)."""
    pts = layout.pts
    for i, (_, frame) in enumerate(read_range(input, chunk.start, chunk.stop, _table(layout))):
        yield chunk.start + i, pts[chunk.start + i], upright(frame, layout.rotation)


def _write(writer: VideoWriter, layout: Layout, frame: np.ndarray, pts: int) -> None:
    """Encode an upright frame in the input's stored orientation (its display rotation is
    set on the assembled file)."""
    writer.write(as_stored(frame, layout.rotation), pts=pts)


def _segment_frames(path: Path, layout: Layout) -> Iterator[np.ndarray]:
    """A written segment's frames (stored as the input's are, untagged), upright."""
    return (upright(f, layout.rotation) for f in read_frames(path))


def _planned(plan: Plan | dict[str, Any], chunk: Chunk) -> dict[int, list[PlannedFace]]:
    """The planned faces of the chunk's frames, by frame index (only the chunk's part of a
    plan in JSON form is validated: a render task reads the whole video's plan)."""
    if isinstance(plan, Plan):
        return {fi: plan.frames[fi] for fi in range(chunk.start, chunk.stop)}
    frames = plan["frames"]
    return {
        fi: [PlannedFace.model_validate(f) for f in frames[fi]]
        for fi in range(chunk.start, chunk.stop)
    }


def _protect_batch(
    batch: Sequence[tuple[int, int, np.ndarray]],
    planned_faces: dict[int, list[PlannedFace]],
    res: Resources,
    records: list[FaceRecord],
    pixels: dict[int, np.ndarray],
    timer: Timer,
    kept: dict[Any, Any],
) -> dict[int, list[FaceRecord]]:
    """Protect the planned faces of a batch of frames; returns their records by frame."""
    p = res.settings.pipeline
    names = res.classifier.meta.class_names
    template = np.asarray(res.classifier.meta.template)
    out_hw = tuple(res.classifier.meta.input_size)
    planned = []
    crops: list[FaceCrop] = []
    for k, (fi, _, frame) in enumerate(batch):
        for face in planned_faces[fi]:
            landmarks = np.asarray(face.landmarks)
            region, theta, corners = face_crop(frame.shape, landmarks, template, out_hw)
            x1, y1, x2, y2 = region
            crops.append(
                FaceCrop(
                    frame=k,
                    face=len(crops),
                    region=region,
                    pixels=frame[y1:y2, x1:x2].copy(),
                    theta=theta,
                    box=np.asarray(face.box, np.float32),
                    score=float(face.score),
                    track=int(face.track),
                    extra={"corners": corners, "landmarks": landmarks},
                )
            )
            planned.append((fi, face))
    by_frame: dict[int, list[FaceRecord]] = defaultdict(list)
    if not crops:
        return by_frame
    with timer("attack"):
        targets = torch.tensor([f.target for _, f in planned])
        preds = torch.tensor([f.pred for _, f in planned])
        outcomes = res.protector.protect(crops, res.context(targets, preds, kept))
    for (fi, face), c, o in zip(planned, crops, outcomes, strict=True):
        rid = len(records)
        pixels[rid] = o.pixels
        rec = FaceRecord(
            frame=fi,
            track=face.track,
            kind=face.kind,
            box=face.box,
            region=list(c.region),
            score=face.score,
            pred=names[face.pred],
            pred_conf=face.pred_conf,
            **o.record(names, p.fallback),
        ).locate(c.theta, c.extra["corners"], rid)
        records.append(rec)
        by_frame[fi].append(rec)
    return by_frame


@dataclass
class ChunkRender:
    """What the steps of rendering one chunk read and write."""

    input: Path
    layout: Layout
    planned: dict[int, list[PlannedFace]]  # the chunk's planned faces by frame
    chunk: Chunk
    res: Resources
    out: Path
    thumbnails: list[dict[str, Any]] | None
    max_thumbnails: int
    on_frames: Callable[[int], None] | None
    timer: Timer = field(default_factory=Timer)
    records: list[FaceRecord] = field(default_factory=list)
    pixels: dict[int, np.ndarray] = field(default_factory=dict)
    kept: dict[Any, Any] = field(default_factory=dict)  # the protector's per-track choices
    by_frame: dict[int, list[FaceRecord]] = field(default_factory=lambda: defaultdict(list))
    first: Path | None = None  # the first encoding
    final: Path | None = None  # the segment to publish (the first, or the repaired one)
    repaired: int = 0
    report: ChunkReport | None = None
    judged: bool = False  # the independent judge measures the written faces
    judge_seen: dict[int, int] = field(default_factory=dict)  # track -> faces met (judge_every)


def _encode(r: ChunkRender) -> None:
    """Protect, paste and encode the chunk's frames (the first encoding)."""
    p, batch_frames = r.res.settings.pipeline, r.res.settings.detector.batch_frames
    torch.manual_seed(p.seed * 1_000_003 + r.chunk.start)
    r.first = r.final = tmp_beside(r.out, "pass1")
    with _writer(r.first, r.layout, p.crf) as writer:
        for batch in iter_batches(_indexed(r.input, r.layout, r.chunk), batch_frames):
            by_frame = _protect_batch(batch, r.planned, r.res, r.records, r.pixels, r.timer, r.kept)
            r.by_frame.update(by_frame)
            if r.judged and by_frame:  # the originals' descriptors, while the frames are here
                with r.timer("judge"):
                    describe_originals(  # only the described faces are judged
                        [f for _, _, f in batch],
                        judge_sample(
                            [x for recs in by_frame.values() for x in recs],
                            p.judge_every,
                            r.judge_seen,
                        ),
                        batch[0][0],
                        p.judge_workers,
                    )
            with r.timer("encode"):
                for fi, pts, frame in batch:
                    composed = _compose(frame, by_frame.get(fi, []), r.pixels, r.res)
                    _write(writer, r.layout, composed, pts)
                    if r.thumbnails is not None:
                        _thumbs(
                            r.thumbnails, r.max_thumbnails, by_frame.get(fi, []), frame, composed
                        )
            if r.on_frames is not None:
                r.on_frames(len(batch))


def _verify(r: ChunkRender) -> None:
    """Re-read the first encoding and check every face in it (and judge it, unless only the
    published segment is judged: :func:`_repair` then does, once that is known)."""
    p = r.res.settings.pipeline
    if not (p.verify and r.records):
        return
    assert r.first is not None
    judge_now = r.judged and not judges_final_only(r.res.settings)
    with r.timer("verify"):
        for start, batch in _numbered(
            _segment_frames(r.first, r.layout), r.res.settings.detector.batch_frames, r.chunk.start
        ):
            recs = [x for fi in range(start, start + len(batch)) for x in r.by_frame.get(fi, [])]
            if recs:
                verify_frames(batch, recs, r.res, start)
                if judge_now:
                    with r.timer("judge"):
                        judge_written(batch, recs, start, workers=p.judge_workers)


def _judge_segment(
    r: ChunkRender, path: Path, which: Callable[[FaceRecord], bool], after_repair: bool
) -> None:
    """The judge on the faces of the segment at ``path`` that ``which`` picks."""
    with r.timer("judge"):
        for start, batch in _numbered(
            _segment_frames(path, r.layout), r.res.settings.detector.batch_frames, r.chunk.start
        ):
            recs = [
                x
                for fi in range(start, start + len(batch))
                for x in r.by_frame.get(fi, [])
                if which(x)
            ]
            if recs:
                judge_written(
                    batch,
                    recs,
                    start,
                    after_repair=after_repair,
                    workers=r.res.settings.pipeline.judge_workers,
                )


def _repair(r: ChunkRender) -> None:
    """Fail closed: obscure every face still recognised (strict privacy: or still linked by
    the judge), encoding again from the input; the judge then measures the repaired file."""
    p = r.res.settings.pipeline
    strict = is_strict(r.res.settings)
    final_only = r.judged and judges_final_only(r.res.settings)  # (r.judged: verify is on)
    if not (
        p.verify and r.records and p.repair and any(needs_repair(x, strict) for x in r.records)
    ):
        if final_only and r.records:  # the first encoding is the one published
            assert r.first is not None
            _judge_segment(r, r.first, lambda x: True, after_repair=False)
        return
    if final_only:
        assert r.first is not None
        # the faces about to be repaired, as the first encoding shows them (their distance
        # before the repair, kept in the report); every face is judged on the repaired file
        _judge_segment(r, r.first, lambda x: needs_repair(x, strict), after_repair=False)
    # until the written segment leaves no face to repair: the judge's figures are the final
    # segment's (re-encoding changes every frame predicted from an obscured one), and in
    # strict privacy a face the re-encoding made linkable is obscured too
    while any(needs_repair(x, strict) for x in r.records):
        r.repaired += len(mark_repairs(r.records, r.res.settings))
        if r.final is not None and r.final != r.first:
            r.final.unlink(missing_ok=True)
        r.final = tmp_beside(r.out, "repair")
        with r.timer("repair"), _writer(r.final, r.layout, p.crf) as w2:
            for fi, pts, frame in _indexed(r.input, r.layout, r.chunk):
                _write(w2, r.layout, _compose(frame, r.by_frame.get(fi, []), r.pixels, r.res), pts)
        if not r.judged:
            return
        _judge_segment(r, r.final, lambda x: True, after_repair=True)


def _publish(r: ChunkRender) -> None:
    """The chunk report, then the segment, each moved into place atomically."""
    assert r.final is not None
    r.report = _chunk_report(r.chunk, r.planned, r.records, r.timer, r.repaired)
    rp = segment_report_path(r.out)
    tmp = tmp_beside(rp)
    tmp.write_text(json.dumps(r.report.wire()) + "\n")
    tmp.replace(rp)
    r.final.replace(r.out)


def _cleanup(r: ChunkRender) -> None:
    for path in (r.first, r.final):
        if path is not None:
            path.unlink(missing_ok=True)


RENDER_STEPS: tuple[Step[ChunkRender], ...] = (
    Step("encode", _encode),
    Step("verify", _verify),
    Step("repair", _repair),
    Step("publish", _publish),
)
"""The order of rendering one chunk; the temporary segments are removed in any case."""


def render(
    input: Path | str,
    layout: Layout | dict[str, Any],
    plan: Plan | dict[str, Any],
    chunk: Chunk,
    res: Resources,
    out: Path | str,
    thumbnails: list[dict[str, Any]] | None = None,
    max_thumbnails: int = MAX_THUMBNAILS,
    on_frames: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Protect, paste, encode, verify and repair one chunk; the segment lands at ``out``
    (``on_frames(n)`` after each batch is encoded).

    ``out`` (an H.264 segment, ``.mp4`` or ``.mkv``) and its report ``out.json`` are written
    atomically, report first, so :func:`chunk_ok` never sees a half-done chunk. Faces whose
    protection failed, or that the re-read segment still shows as themselves, are obscured
    (fail closed); the repaired segment is encoded again from the input, not from the
    first encoding.

    Returns:
        the :class:`ChunkReport` (JSON form): ``chunk``, ``faces`` (one record per planned
        face), ``coverage``, ``repaired``, ``seconds``.
    """
    input, out = Path(input), Path(out)
    if out.suffix.lower() not in WRITABLE_VIDEO_FORMATS:
        raise OutputError(out, f"expected a segment suffix in {sorted(WRITABLE_VIDEO_FORMATS)}")
    check_judge(res.settings)
    job = ChunkRender(
        input,
        Layout.of(layout),
        _planned(plan, chunk),
        chunk,
        res,
        out,
        thumbnails,
        max_thumbnails,
        on_frames,
        judged=judge_status(res.settings) is None,
    )
    run_steps(RENDER_STEPS, job, cleanup=_cleanup)
    assert job.report is not None
    return job.report.wire()


def render_chunk(
    input: str,
    layout: dict[str, Any],
    plan: dict[str, Any],
    chunk: Chunk,
    out: str,
    thumbnails: bool,
    res: Resources,
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """:func:`render` as a worker process runs it: (the chunk report, its thumbnails when
    ``thumbnails``)."""
    thumbs: list[dict[str, Any]] | None = [] if thumbnails else None
    return render(input, layout, plan, chunk, res, out, thumbs), thumbs


def _thumbs(
    thumbnails: list[dict[str, Any]],
    limit: int,
    recs: Sequence[FaceRecord],
    frame: np.ndarray,
    composed: np.ndarray,
) -> None:
    for r in recs:
        if len(thumbnails) < limit and r.kind == "detected":
            x1, y1, x2, y2 = r.region
            thumbnails.append(
                r.thumbnail(frame[y1:y2, x1:x2].copy(), composed[y1:y2, x1:x2].copy())
            )


def _numbered(
    frames: Iterator[np.ndarray], n: int, first: int
) -> Iterator[tuple[int, list[np.ndarray]]]:
    start = first
    for batch in iter_batches(frames, n):
        yield start, batch
        start += len(batch)


def _chunk_report(
    chunk: Chunk,
    planned_faces: dict[int, list[PlannedFace]],
    records: list[FaceRecord],
    timer: Timer,
    repaired: int,
) -> ChunkReport:
    planned = [len(planned_faces[fi]) for fi in range(chunk.start, chunk.stop)]
    protected = [0] * chunk.frames
    for r in records:
        protected[r.frame - chunk.start] += r.protected
    return ChunkReport(
        chunk=chunk,
        faces=records,
        coverage=Coverage(faces=planned, protected=protected),
        repaired=repaired,
        seconds=timer.rounded(),
    )


# --------------------------------------------------------------------------------------------
# 5. assemble
# --------------------------------------------------------------------------------------------
def assemble(
    input: Path | str,
    layout: Layout | dict[str, Any],
    parts: Sequence[Path | str],
    output: Path | str,
    reports: Sequence[ChunkReport | dict[str, Any]],
    res: Resources,
    plan: Plan | dict[str, Any] | None = None,
    analyses: Sequence[Analysis | dict[str, Any]] = (),
) -> dict[str, Any]:
    """Join the segments in order (no re-encode) with the input's audio, atomically; check the
    frame count; return the job's :class:`RunReport` (JSON form, not written)."""
    input, output, layout = Path(input), Path(output), Layout.of(layout)
    chunk_reports = [ChunkReport.of(r) for r in reports]
    order = sorted(range(len(chunk_reports)), key=lambda i: chunk_reports[i].chunk.start)
    paths = [Path(parts[i]) for i in order]
    chunk_reports = [chunk_reports[i] for i in order]
    concat_videos(
        paths,
        output,
        audio_from=input if layout.has_audio else None,
        rotation=layout.rotation,
    )
    info = probe_video(output)
    if info.frame_count != layout.frames:
        output.unlink(missing_ok=True)
        raise OutputError(
            output, f"joined {info.frame_count} frames; expected {layout.frames} (removed it)"
        )
    return job_report(
        input,
        output,
        layout,
        chunk_reports,
        res,
        _tracks(plan),
        [Analysis.of(a) for a in analyses],
        info,
        unconfirmed=_unconfirmed(plan),
    ).wire()


def _tracks(plan: Plan | dict[str, Any] | None) -> list[TrackPlan]:
    """The plan's tracks (without validating its every frame)."""
    if plan is None:
        return []
    if isinstance(plan, Plan):
        return list(plan.tracks)
    return [TrackPlan.model_validate(t) for t in plan["tracks"]]


def _unconfirmed(plan: Plan | dict[str, Any] | None) -> int | None:
    """The plan's count of weak detections it dropped (None without a plan)."""
    if plan is None:
        return None
    return plan.unconfirmed if isinstance(plan, Plan) else int(plan.get("unconfirmed", 0))


def _too_small(layout: Layout, res: Resources) -> bool:
    """Whether the video's frames are too small for the detector (no face can be found)."""
    return res.detector.too_small((layout.height, layout.width))


def job_report(
    input: Path,
    output: Path,
    layout: Layout,
    reports: Sequence[ChunkReport],
    res: Resources,
    planned_tracks: Sequence[TrackPlan],
    analyses: Sequence[Analysis],
    out_info: VideoInfo,
    unconfirmed: int | None = None,
) -> RunReport:
    """The report of a video job, merged from its chunk reports (``unconfirmed``: the plan's
    count of weak detections dropped with their unconfirmed tracks)."""
    names = res.classifier.meta.class_names
    faces = [f for r in reports for f in r.faces]
    cov_faces = [n for r in reports for n in r.coverage.faces]
    cov_prot = [n for r in reports for n in r.coverage.protected]
    verified = [f.verified for f in faces if f.verified is not None]
    seconds: dict[str, float] = defaultdict(float)
    for part in [*analyses, *reports]:
        for k, v in part.seconds.items():
            seconds[k] += v
    by_track: dict[int, list[FaceRecord]] = defaultdict(list)
    for f in faces:
        by_track[f.track].append(f)
    judge = judge_summary(
        faces, res.settings, seconds.get("judge"), res.settings.pipeline.judge_every
    )
    judged = judge.status == "judged"
    tracks = []
    for t in planned_tracks:
        fs = by_track.get(t.id, [])
        tracks.append(
            TrackReport(
                **{
                    **t.model_dump(),
                    "pred": names[t.pred],
                    # what its faces were steered to (a generator's lookalike target is
                    # chosen on the new face, after the plan)
                    "target": Counter(f.target for f in fs).most_common(1)[0][0]
                    if fs
                    else names[t.target],
                },
                targets_used=sorted({f.target for f in fs}),
                attacked=sum(f.attacked for f in fs),
                obscured=sum(not f.attacked for f in fs),
                verified_target=sum(f.verified is not None and f.verified.is_target for f in fs),
                **({"judge": judge_totals([f.judge for f in fs])} if judged else {}),
            )
        )
    deid_rate = (
        round(sum(not v.is_original for v in verified) / len(verified), 4) if verified else None
    )
    totals = Totals(
        frames=layout.frames,
        frames_with_faces=sum(n > 0 for n in cov_faces),
        frames_without_faces=sum(n == 0 for n in cov_faces),
        frames_too_small=layout.frames if _too_small(layout, res) else 0,
        **face_totals(faces),
        faces_detected=sum(f.kind == "detected" for f in faces),
        faces_interpolated=sum(f.kind == "interpolated" for f in faces),
        faces_extrapolated=sum(f.kind == "extrapolated" for f in faces),
        tracks=len(tracks),
        detections_unconfirmed=unconfirmed,
        deidentified_on_output_rate=deid_rate,
        repaired=sum(r.repaired for r in reports),
        unprotected_faces=sum(not f.protected for f in faces),
        frames_with_unprotected_face=sum(p < n for p, n in zip(cov_prot, cov_faces, strict=True)),
        target_changes_within_tracks=sum(max(0, len(t.targets_used) - 1) for t in tracks),
    )
    return RunReport(
        **res.header("video", input, output),
        totals=totals,
        video=VideoSummary(
            fps_in=layout.fps,
            fps_out=out_info.fps,
            frames_in=layout.frames,
            frames_out=out_info.frame_count,
            duration_in=layout.duration,
            duration_out=out_info.duration,
            width=layout.width,
            height=layout.height,
            rotation=layout.rotation,
            audio_in=layout.has_audio,
            audio_out=out_info.has_audio,
            crf=res.settings.pipeline.crf,
            chunks=len(layout.chunks),
        ),
        coverage=Coverage(faces=cov_faces, protected=cov_prot),
        tracks=tracks,
        judge=judge,
        seconds={k: round(v, 3) for k, v in seconds.items()},
        faces_detail=faces,
    )


# --------------------------------------------------------------------------------------------
# the whole job, in-process
# --------------------------------------------------------------------------------------------
def segment_suffix(output: Path) -> str:
    return ".mkv" if output.suffix.lower() == ".mkv" else ".mp4"


def _bar(step: str, input: Path, layout: Layout, progress: bool) -> tqdm:
    """A progress bar over the video's frames for one step (``analyse``, ``render``)."""
    desc = f"{step} {input.name}"
    return tqdm(total=layout.frames, desc=desc, unit="frame", disable=not progress)


@dataclass
class VideoJob:
    """What the steps of an in-process video job read and write (each artefact in its JSON
    form, as the service's workers exchange them)."""

    input: Path
    output: Path
    res: Resources
    chunk_frames: int
    progress: bool
    thumbnails: list[dict[str, Any]] | None
    work: Path | None = None  # the hidden folder of the segments
    layout: dict[str, Any] = field(default_factory=dict)
    analyses: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)
    parts: list[Path] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    pool: ChunkPool | None = None  # worker processes (pipeline.workers > 1)

    @property
    def chunks(self) -> list[Chunk]:
        return chunks_of(self.layout)


def _split(j: VideoJob) -> None:
    j.layout = split(j.input, j.chunk_frames)
    layout = Layout.of(j.layout)
    if _too_small(layout, j.res):
        log.warning(
            "%s: frames of %dx%d are too small for the detector (shorter side under "
            "detector.min_face_size, %d px): no face can be found in them; passed through",
            j.input,
            layout.width,
            layout.height,
            j.res.settings.detector.min_face_size,
        )
    with writing(j.output):
        j.output.parent.mkdir(parents=True, exist_ok=True)
        j.work = Path(tempfile.mkdtemp(prefix=f".{j.output.name}.parts-", dir=j.output.parent))


def _pool(j: VideoJob) -> ChunkPool | None:
    """The job's worker processes (``pipeline.workers``), started on first use; None: the
    chunks run in this process."""
    if j.pool is None:
        n = pool_size(j.res.settings.pipeline.workers, len(j.chunks))
        if n > 1:
            j.pool = ChunkPool(j.res.settings, n)
    return j.pool


def _analyse(j: VideoJob) -> None:
    # one bar per pass: each counts every frame once, and its ETA is its own pass's speed
    # (analysis is several times faster than the attack)
    with _bar("analyse", j.input, Layout.of(j.layout), j.progress) as bar:
        pool = _pool(j)
        if pool is not None:
            calls = [(str(j.input), j.layout, c) for c in j.chunks]
            j.analyses = pool.map(analyse, calls, j.chunks, lambda c: bar.update(c.frames))
            return
        j.analyses = [analyse(j.input, j.layout, c, j.res, on_frames=bar.update) for c in j.chunks]


def _plan(j: VideoJob) -> None:
    j.plan = plan(j.layout, j.analyses, j.res)


def _render(j: VideoJob) -> None:
    assert j.work is not None
    with _bar("render", j.input, Layout.of(j.layout), j.progress) as bar:
        pool = _pool(j)
        if pool is not None:
            parts = [j.work / f"{c.index:05d}{segment_suffix(j.output)}" for c in j.chunks]
            keep = j.thumbnails is not None
            calls = [
                (str(j.input), j.layout, j.plan, c, str(p), keep)
                for c, p in zip(j.chunks, parts, strict=True)
            ]
            done = pool.map(render_chunk, calls, j.chunks, lambda c: bar.update(c.frames))
            for (report, thumbs), part in zip(done, parts, strict=True):
                j.reports.append(report)
                j.parts.append(part)
                if j.thumbnails is not None and thumbs:  # as one process fills them
                    j.thumbnails.extend(thumbs[: max(0, MAX_THUMBNAILS - len(j.thumbnails))])
            return
        for c in j.chunks:
            part = j.work / f"{c.index:05d}{segment_suffix(j.output)}"
            report = render(
                j.input, j.layout, j.plan, c, j.res, part, j.thumbnails, on_frames=bar.update
            )
            j.reports.append(report)
            j.parts.append(part)


def _assemble(j: VideoJob) -> None:
    j.report = assemble(j.input, j.layout, j.parts, j.output, j.reports, j.res, j.plan, j.analyses)


def _remove_work(j: VideoJob) -> None:
    if j.pool is not None:
        j.pool.close()
        j.pool = None
    if j.work is not None:
        shutil.rmtree(j.work, ignore_errors=True)


VIDEO_STEPS: tuple[Step[VideoJob], ...] = (
    Step("split", _split),
    Step("analyse", _analyse),
    Step("plan", _plan),
    Step("render", _render),
    Step("assemble", _assemble),
)
"""The order of a video job's steps (the service runs the same ones as tasks)."""


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
    job = VideoJob(
        input, output, res, chunk_frames or res.settings.pipeline.chunk_frames, progress, thumbnails
    )
    return run_steps(VIDEO_STEPS, job, cleanup=_remove_work).report
