"""The image driver: de-identify an image, or every image of a folder.

One image runs :data:`IMAGE_STEPS` in order: decode, protect (detect, crop, classify,
protect, paste), encode to a temporary file beside the output, verify on the re-read file,
repair (obscure faces still recognised), publish (rename into place); the temporary file is
removed whatever happens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deid.align import obscure, paste_owned
from deid.config import Settings
from deid.errors import InputError, OutputError
from deid.io import (
    IMAGE_EXTS,
    Pages,
    list_images,
    read_image_pages,
    tmp_beside,
    write_image_pages,
    writing,
)
from deid.pipeline.report import FaceRecord, FailedInput, RunReport, Totals, face_totals
from deid.pipeline.resources import Resources
from deid.pipeline.stages import TargetMemory, classify, crop, detect
from deid.pipeline.steps import Step, Timer, run_steps
from deid.pipeline.verify import (
    check_judge,
    describe_originals,
    is_strict,
    judge_status,
    judge_summary,
    judge_written,
    judges_final_only,
    needs_repair,
    repair_frames,
    verify_frames,
)
from deid.targets import choose_targets

log = logging.getLogger(__name__)


@dataclass
class StreamState:
    """State carried from one batch of frames to the next (target memory, RNG, counters)."""

    memory: TargetMemory
    generator: torch.Generator
    frame_offset: int = 0
    too_small: int = 0  # frames too small for the detector (passed through)
    thumbnails: list[dict[str, Any]] = field(default_factory=list)
    max_thumbnails: int = 24
    judged: bool = False  # the independent judge measures the written faces


def new_state(settings: Settings) -> StreamState:
    """Fresh state for a run (or a file of a batch).

    Raises:
        JudgeMissingError: strict privacy (or ``pipeline.judge: on``) without the judge.
    """
    check_judge(settings)  # strict must never quietly run unjudged
    return StreamState(
        TargetMemory(settings.tracking.iou),
        torch.Generator().manual_seed(settings.pipeline.seed),
        judged=judge_status(settings) is None,
    )


def process_frames(
    frames: list[np.ndarray], res: Resources, state: StreamState, timer: Timer
) -> tuple[list[np.ndarray], list[FaceRecord]]:
    """De-identify a batch of RGB frames. Returns the new frames and one record per face."""
    names = res.classifier.meta.class_names
    state.too_small += sum(res.detector.too_small(f.shape) for f in frames)
    with timer("detect"):
        dets = detect(res.detector, frames)
    with timer("crop"):
        crops = crop(frames, dets, res.classifier)
    out = [f.copy() for f in frames]
    records: list[FaceRecord] = []
    if not crops:
        state.frame_offset += len(frames)
        return out, records
    with timer("classify"):
        logits = classify(res.classifier, crops, res.device)
        probs = torch.softmax(logits, 1)
        preds = logits.argmax(1)
        proposed = choose_targets(logits, res.target_mode, state.generator)  # type: ignore[arg-type]
        targets = proposed.clone()
        for fi in range(len(frames)):
            idx = [i for i, c in enumerate(crops) if c.frame == fi]
            if idx:
                targets[idx] = state.memory.assign(
                    [crops[i] for i in idx], proposed[idx], preds[idx]
                )
    with timer("attack"):
        outcomes = res.protector.protect(crops, res.context(targets, preds, state.memory.kept))
    fallback = res.settings.pipeline.fallback
    with timer("paste"):
        done = [(c, o.pixels) for c, o in zip(crops, outcomes, strict=True) if o.success]
        paste_owned(out, [c for c, _ in done], [px for _, px in done])
        for c, o in zip(crops, outcomes, strict=True):
            if not o.success:  # after the pastes: none undoes it
                obscure(out[c.frame], c, fallback)
        for i, (c, o) in enumerate(zip(crops, outcomes, strict=True)):
            rec = FaceRecord(
                frame=state.frame_offset + c.frame,
                box=[round(float(v), 1) for v in c.box],
                region=list(c.region),
                score=round(c.score, 4),
                track=c.track,
                pred=names[o.pred],
                pred_conf=round(float(probs[i, o.pred]), 4),
                **o.record(names, fallback),
            ).locate(c.theta, c.extra["corners"])
            records.append(rec)
            if len(state.thumbnails) < state.max_thumbnails:
                x1, y1, x2, y2 = c.region
                state.thumbnails.append(rec.thumbnail(c.pixels, out[c.frame][y1:y2, x1:x2].copy()))
    state.frame_offset += len(frames)
    return out, records


# --------------------------------------------------------------------------------------------
# one image: its steps
# --------------------------------------------------------------------------------------------
@dataclass
class ImageRun:
    """What the steps of one image read and write."""

    input: Path
    output: Path
    res: Resources
    state: StreamState
    timer: Timer
    tmp: Path
    # the file's frames: one, or the pages of a multi-page TIFF, an animated WebP or PNG
    frames: list[np.ndarray] = field(default_factory=list)
    pages: Pages | None = None  # each frame's greyscale, alpha, 16 bits; the timing: kept
    first: int = 0  # the run's frame index of the file's first frame
    out: list[np.ndarray] = field(default_factory=list)
    records: list[FaceRecord] = field(default_factory=list)
    written: list[np.ndarray] | None = None


def _decode(r: ImageRun) -> None:
    with r.timer("decode"):
        r.frames, r.pages = read_image_pages(r.input)


def _protect(r: ImageRun) -> None:
    r.first = r.state.frame_offset
    r.out, r.records = process_frames(r.frames, r.res, r.state, r.timer)


def _write(r: ImageRun, frames: list[np.ndarray]) -> None:
    assert r.pages is not None
    with writing(r.output):
        write_image_pages(r.tmp, frames, r.res.settings.pipeline.jpeg_quality, r.pages)


def _reread(r: ImageRun) -> list[np.ndarray]:
    return read_image_pages(r.tmp)[0]


def _encode(r: ImageRun) -> None:
    with r.timer("encode"):
        _write(r, r.out)


def _verify(r: ImageRun) -> None:
    if r.res.settings.pipeline.verify and r.records:
        first = r.first
        with r.timer("verify"):
            r.written = _reread(r)
            verify_frames(r.written, r.records, r.res, first)
        if r.state.judged:
            p = r.res.settings.pipeline
            strict = is_strict(r.res.settings)
            # only the faces about to be repaired, where :func:`_repair` judges the final file
            final_only = judges_final_only(r.res.settings)
            judged = [x for x in r.records if not final_only or needs_repair(x, strict)]
            with r.timer("judge"):
                describe_originals(r.frames, r.records, first, p.judge_workers)
                if judged:
                    judge_written(r.written, judged, first, workers=p.judge_workers)


def _repair(r: ImageRun) -> None:
    p = r.res.settings.pipeline
    strict = is_strict(r.res.settings)
    if r.written is None or not p.repair:
        return
    first = r.first
    final_only = r.state.judged and judges_final_only(r.res.settings)
    if final_only and not any(needs_repair(x, strict) for x in r.records):
        with r.timer("judge"):  # the written file is the final one
            judge_written(r.written, r.records, first, workers=p.judge_workers)
        return
    # until the written file leaves no face to repair: the judge's figures are the final
    # file's, and in strict privacy a face the re-encoding made linkable is obscured too
    while any(needs_repair(x, strict) for x in r.records):
        repair_frames(r.written, r.records, r.res, first)
        _write(r, r.written)
        if not r.state.judged:
            break
        with r.timer("judge"):
            judge_written(_reread(r), r.records, first, after_repair=True, workers=p.judge_workers)


def _publish(r: ImageRun) -> None:
    with writing(r.output):
        r.tmp.replace(r.output)
    for x in r.records:
        x.file = str(r.input)
        if len(r.frames) > 1:
            x.page = x.frame - r.first


IMAGE_STEPS: tuple[Step[ImageRun], ...] = (
    Step("decode", _decode),
    Step("protect", _protect),
    Step("encode", _encode),
    Step("verify", _verify),
    Step("repair", _repair),
    Step("publish", _publish),
)
"""The order of one image's steps (see the module docstring)."""


def process_image(
    input: Path, output: Path, res: Resources, state: StreamState, timer: Timer
) -> list[FaceRecord]:
    """De-identify one image file into ``output`` (verified on the written file, then renamed)."""
    run = ImageRun(input, output, res, state, timer, tmp_beside(output, "pass1"))
    run_steps(IMAGE_STEPS, run, cleanup=lambda r: r.tmp.unlink(missing_ok=True))
    return run.records


# --------------------------------------------------------------------------------------------
# an image or a folder
# --------------------------------------------------------------------------------------------
def image_run(
    input: Path, output: Path, res: Resources, progress: bool = True
) -> tuple[RunReport, list[dict[str, Any]]]:
    """De-identify an image, or every image under a folder (the output mirrors the tree).

    Returns:
        the report (not written) and the contact sheet's faces.
    """
    timer, state = Timer(), new_state(res.settings)
    if input.is_dir():
        files = list_images(input)
        if not files:
            raise InputError(input, f"no images found (looked for {', '.join(sorted(IMAGE_EXTS))})")
        pairs = [(f, output / f.relative_to(input)) for f in files]
        kind = "folder"
    else:
        if output.suffix.lower() not in IMAGE_EXTS:
            raise OutputError(output, f"expected an image output ({', '.join(sorted(IMAGE_EXTS))})")
        pairs = [(input, output)]
        kind = "image"
    records: list[FaceRecord] = []
    failed: list[FailedInput] = []
    too_small: list[str] = []
    frames_with_faces = 0
    for src, dst in tqdm(
        pairs, desc=f"deid {input.name}", unit="image", disable=not progress or len(pairs) < 2
    ):
        small_before = state.too_small
        with writing(dst):
            dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            recs = process_image(src, dst, res, state, timer)
        except InputError as e:
            if kind == "image":
                raise
            log.warning("skipping %s: %s", src, e.reason)
            failed.append(FailedInput(file=str(src), error=e.reason))
            state.frame_offset += 1
            continue
        if state.too_small > small_before:
            log.warning(
                "%s: too small for the detector (shorter side under detector.min_face_size, "
                "%d px): no face can be found in it; passed through",
                src,
                res.settings.detector.min_face_size,
            )
            too_small.append(str(src))
        frames_with_faces += bool(recs)
        records.extend(recs)
    n_frames = state.frame_offset
    totals = Totals(
        frames=n_frames,
        frames_with_faces=frames_with_faces,
        frames_without_faces=n_frames - frames_with_faces,
        frames_too_small=state.too_small,
        **face_totals(records),
        unprotected_faces=sum(needs_repair(r) for r in records),
    )
    report = RunReport(
        **res.header(kind, input, output),
        totals=totals,
        judge=judge_summary(records, res.settings, timer.seconds.get("judge")),
        seconds=timer.rounded(),
        faces_detail=records,
        failed_inputs=failed,
        too_small_inputs=too_small,
    )
    return report, state.thumbnails


def run_images(input: Path, output: Path, res: Resources, progress: bool = True) -> dict[str, Any]:
    """De-identify an image, or every image under a folder; returns the report's JSON form
    (not written; :func:`deid.pipeline.run` writes it)."""
    return image_run(input, output, res, progress)[0].wire()
