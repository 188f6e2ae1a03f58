"""Verification and repair on the written file: re-read it, re-classify every protected face
(the same crop, and a fresh re-detection around it) and obscure any face still recognised as
itself (fail closed). Attack and generator output are checked alike.

The independent judge (:mod:`deid.judge`, dlib's face recognizer) measures here too, on the
same re-read file: per face the distance between the original and the written face at the
face's crop region (:func:`region_pixels`, the cut ``deid eval privacy --run`` makes as well).
With ``pipeline.privacy: strict`` a face the judge still links is obscured like a face the
classifier still recognises. The judge only ever measures written faces; no protection step
sees it (``tests/test_judge.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from deid import judge
from deid.align import obscure
from deid.config import Settings
from deid.detect import Detector
from deid.pipeline.keyframes import pad_to_bucket
from deid.pipeline.report import FaceJudge, FaceRecord, JudgeSummary, Verified, judge_totals
from deid.pipeline.resources import Resources
from deid.pipeline.stages import classify, crop, detect, iou
from deid.types import Detections, FaceCrop


def detect_around(
    detector: Detector,
    frames: Sequence[np.ndarray],
    by_frame: Mapping[int, Sequence[FaceRecord | Mapping[str, Any]]],
    context: float = 0.5,
) -> list[Detections]:
    """Re-detect faces only in windows around the faces a frame is known to hold.

    Each window is the face's crop region grown by ``context`` of its side on every side;
    detections are mapped back to frame coordinates and duplicates from overlapping windows
    (box IoU > 0.5) dropped. Windows are padded (black, right and bottom) to a few sizes
    (:data:`deid.pipeline.keyframes.BUCKETS`), so the faces of a batch of frames take a
    handful of batched detector calls, not one each. Several times cheaper than a
    full-frame pass on large frames.
    """
    windows: list[np.ndarray] = []
    where: list[tuple[int, int, int]] = []
    for fi, recs in by_frame.items():
        fh, fw = frames[fi].shape[:2]
        for r in recs:
            x1, y1, x2, y2 = r.region if isinstance(r, FaceRecord) else r["region"]
            m = round(context * max(x2 - x1, y2 - y1))
            wx1, wy1 = max(0, x1 - m), max(0, y1 - m)
            wx2, wy2 = min(fw, x2 + m), min(fh, y2 + m)
            windows.append(pad_to_bucket(frames[fi][wy1:wy2, wx1:wx2]))
            where.append((fi, wx1, wy1))
    found: dict[int, list[tuple[np.ndarray, float, np.ndarray]]] = defaultdict(list)
    for (fi, ox, oy), d in zip(
        where, detector.detect(windows, edge_pad=0) if windows else [], strict=True
    ):
        off = np.array([ox, oy], np.float32)
        for k in range(len(d)):
            box = d.boxes[k] + np.tile(off, 2)
            if all(iou(box, b) <= 0.5 for b, _, _ in found[fi]):
                found[fi].append((box, float(d.scores[k]), d.landmarks[k] + off))
    out = []
    for fi in range(len(frames)):
        faces = found.get(fi, [])
        if not faces:
            out.append(Detections.empty())
            continue
        out.append(
            Detections(
                np.stack([f[0] for f in faces]).astype(np.float32),
                np.array([f[1] for f in faces], np.float32),
                np.stack([f[2] for f in faces]).astype(np.float32),
            )
        )
    return out


def verify_frames(
    frames: Sequence[np.ndarray],
    records: Sequence[FaceRecord],
    res: Resources,
    first_frame: int,
) -> int:
    """Re-classify the written faces (in place: sets each record's ``verified``).

    Returns the number of faces the re-detection found that match no processed face (always
    0 with ``pipeline.verify_detect: around``, which only looks near processed faces, and
    with ``none``).

    Two readings per face: the *same crop* as at attack time (did the perturbation survive
    encoding?) and a fresh *re-detection* matched by box overlap (what a recogniser running
    its own detector on the published file would see; skipped with ``verify_detect: none``,
    where the same crop alone decides).
    """
    names = res.classifier.meta.class_names
    by_frame = {fi - first_frame: recs for fi, recs in by_frame_of(records).items()}
    mode = res.settings.pipeline.verify_detect
    if mode == "full":
        dets = detect(res.detector, frames)
    elif mode == "around":
        dets = detect_around(res.detector, frames, by_frame)
    else:
        dets = [Detections.empty() for _ in frames]
    crops = crop(frames, dets, res.classifier)
    redet_preds = (
        classify(res.classifier, crops, res.device).argmax(1)
        if crops
        else torch.zeros(0, dtype=torch.long)
    )
    same: list[FaceCrop] = []
    owners: list[FaceRecord] = []
    for fi, recs in by_frame.items():
        for r in recs:
            same.append(record_crop(r, frames[fi], fi))
            owners.append(r)
    same_preds = (
        classify(res.classifier, same, res.device).argmax(1)
        if same
        else torch.zeros(0, dtype=torch.long)
    )
    for r, p in zip(owners, same_preds.tolist(), strict=True):
        fi = r.frame - first_frame
        best, best_iou = None, 0.3
        for c, q in zip(crops, redet_preds.tolist(), strict=True):
            if c.frame == fi and (o := iou(c.box, np.asarray(r.box))) >= best_iou:
                best, best_iou = names[q], o
        same_crop = names[p]
        r.verified = Verified(
            same_crop=same_crop,
            redetected=best,  # None: the detector no longer finds this face
            redetect=mode != "none",
            is_target=same_crop == r.target and best in (None, r.target),
            is_original=same_crop == r.pred or best == r.pred,
        )
    matched = sum(
        1
        for c in crops
        if any(iou(c.box, np.asarray(r.box)) >= 0.3 for r in by_frame.get(c.frame, []))
    )
    return len(crops) - matched


def record_crop(r: FaceRecord, frame: np.ndarray, index: int = 0) -> FaceCrop:
    """The :class:`FaceCrop` a face record was protected at, cut from ``frame`` (a re-read
    one, or the input frame when the face is composed again)."""
    x1, y1, x2, y2 = r.region
    return FaceCrop(
        frame=index,
        face=0,
        region=(x1, y1, x2, y2),
        pixels=frame[y1:y2, x1:x2].copy(),
        theta=r.theta,
        box=np.asarray(r.box, np.float32),
        extra={"corners": r.corners},
    )


#: What strict privacy obscures with when the user's fallback still leaves a face the judge
#: links (pixelation keeps a face's layout and colours; a small face pixelated in 8 blocks can
#: still be linked): the region filled black, which is final.
STRICT_LAST_RESORT = "black"


def obscured_with(r: FaceRecord, fallback: str) -> str:
    """How a face that is not attacked is obscured: its action's method
    (``obscured:<how>``, ``repaired:<how>[:judge-linked]``), else ``fallback``."""
    parts = r.action.split(":")
    return parts[1] if len(parts) > 1 and parts[0] in ("obscured", "repaired") else fallback


def needs_repair(r: FaceRecord, strict: bool = False) -> bool:
    """Protected, yet the written file still shows the face as itself: to deid's classifier,
    or (``strict``) to the judge (fail closed on it; a face the judge still links though
    obscured is obscured again with :data:`STRICT_LAST_RESORT`)."""
    if r.needs_repair:
        return True
    if not (strict and r.judge is not None and r.judge.linked):
        return False
    return r.attacked or obscured_with(r, "") != STRICT_LAST_RESORT


def is_strict(settings: Settings) -> bool:
    return settings.pipeline.privacy == "strict"


def judges_final_only(settings: Settings) -> bool:
    """Whether a judged run judges only the file it publishes: in standard privacy with
    repair the judge's verdicts decide nothing, so a written file that a repaired one
    replaces is judged only for the faces about to be repaired (their distance before the
    repair); strict privacy, whose repairs follow the judge, judges every written file."""
    return settings.pipeline.repair and not is_strict(settings)


def mark_repairs(records: Sequence[FaceRecord], settings: Settings) -> list[FaceRecord]:
    """Set the action of every face to repair (``repaired:<fallback>``, with
    ``:judge-linked`` when only the judge links it) and return them."""
    fallback, strict = settings.pipeline.fallback, is_strict(settings)
    out = []
    for r in records:
        if needs_repair(r, strict):
            why = "" if r.needs_repair else f":{JUDGE_LINKED}"
            # obscured already, yet linked: the fallback did not hide it from the judge
            how = fallback if r.attacked or r.needs_repair else STRICT_LAST_RESORT
            r.action = f"repaired:{how}{why}"
            out.append(r)
    return out


def repair_frames(
    frames: list[np.ndarray], records: Sequence[FaceRecord], res: Resources, first_frame: int
) -> int:
    """Fail closed on the written file: obscure every face still recognised as itself (and,
    in strict privacy, every face the judge still links)."""
    repaired = mark_repairs(records, res.settings)
    for r in repaired:
        frame = frames[r.frame - first_frame]
        obscure(frame, record_crop(r, frame), obscured_with(r, res.settings.pipeline.fallback))
    return len(repaired)


# --------------------------------------------------------------------------------------------
# the independent judge on the written file
# --------------------------------------------------------------------------------------------
JUDGE_LINKED = "judge-linked"
MIN_JUDGED_SIDE = 8  # px: the judge refuses smaller crops


def judge_status(settings: Settings) -> str | None:
    """None when the judge measures this run's written faces, else why it does not."""
    p = settings.pipeline
    if p.judge == "off":
        return "pipeline.judge is off"
    if not p.verify:
        return "verification is off (pipeline.verify: false): no re-read output to judge"
    if not judge.available():
        return f"the judge's extra is not installed ({judge.INSTALL_HINT})"
    return None


def check_judge(settings: Settings) -> None:
    """Refuse, before any work, settings that need the judge where it is not installed.

    Raises:
        JudgeMissingError: ``pipeline.privacy: strict`` or ``pipeline.judge: on`` without
            the extra (the message names ``pip install 'deid[judge]'``).
    """
    p = settings.pipeline
    if (is_strict(settings) or p.judge == "on") and not judge.available():
        need = (
            "--strict (pipeline.privacy: strict)" if is_strict(settings) else "pipeline.judge: on"
        )
        raise judge.JudgeMissingError(
            f"{need} needs the face-recognition judge; install it with {judge.INSTALL_HINT}"
        )


def region_pixels(region: Sequence[float], frame: np.ndarray) -> np.ndarray:
    """A face's pixels at its crop region ``(x1, y1, x2, y2)``: what the judge compares, cut
    alike from the input frame and the written one."""
    x1, y1, x2, y2 = (int(v) for v in region)
    return frame[y1:y2, x1:x2]


def _judgeable(px: np.ndarray) -> bool:
    return min(px.shape[:2]) >= MIN_JUDGED_SIDE


def describe_originals(
    frames: Sequence[np.ndarray],
    records: Sequence[FaceRecord],
    first_frame: int,
    workers: int | None = 1,
) -> None:
    """The judge's descriptor of each face in its input frame, kept on the record
    (:meth:`FaceRecord.describe`); one batch, shared by ``workers`` processes
    (``pipeline.judge_workers``). A face under 8 px is not judged."""
    recs, faces = [], []
    for r in records:
        px = region_pixels(r.region, frames[r.frame - first_frame])
        if _judgeable(px):
            recs.append(r)
            faces.append(px)
    if recs:
        for r, d in zip(recs, judge.load_judge().descriptors(faces, workers), strict=True):
            r.describe(d)


def judge_sample(
    records: Sequence[FaceRecord], every: int, seen: dict[int, int]
) -> list[FaceRecord]:
    """The faces the judge measures (``pipeline.judge_every``): of each track, its first face
    and every ``every``-th after it, counted in frame order across calls in ``seen`` (track
    -> faces met so far); with ``every`` 1, all of them."""
    if every == 1:
        return list(records)
    out = []
    for r in sorted(records, key=lambda r: (r.frame, r.track)):
        k = seen.get(r.track, 0)
        seen[r.track] = k + 1
        if k % every == 0:
            out.append(r)
    return out


def judge_written(
    frames: Sequence[np.ndarray],
    records: Sequence[FaceRecord],
    first_frame: int,
    after_repair: bool = False,
    workers: int | None = 1,
) -> int:
    """Judge each described face in the written frames (sets ``record.judge``); one batch.

    Args:
        workers: processes that share the batch's descriptors (``pipeline.judge_workers``).
        after_repair: the frames are the repaired file's; a repaired face keeps its
            distance from before the repair as ``distance_before_repair``. (Judge every face
            of a repaired file again, not only the obscured ones: a re-encoded video
            predicts frames from the obscured ones, so no written pixel is the same.)

    Returns:
        the faces judged.
    """
    recs = [r for r in records if r.original is not None]
    if not recs:
        return 0
    j = judge.load_judge()
    desc = j.descriptors(
        [region_pixels(r.region, frames[r.frame - first_frame]) for r in recs], workers
    )
    for r, d in zip(recs, desc, strict=True):
        assert r.original is not None
        dist = float(judge.distance(r.original, d))
        before = None
        if after_repair and r.judge is not None and r.action.startswith("repaired"):
            # the distance while the face was still natural (kept through later passes)
            before = r.judge.distance_before_repair or r.judge.distance
        r.judge = FaceJudge(
            distance=round(dist, 4),
            linked=dist < j.threshold,
            natural=r.attacked,
            **({"distance_before_repair": before} if before is not None else {}),
        )
    return len(recs)


def judge_summary(
    faces: Sequence[FaceRecord], settings: Settings, seconds: float | None, every: int = 1
) -> JudgeSummary:
    """The report's ``judge``: its totals over ``faces``, or "not judged" and why.
    ``every``: 1 where every face was judged (images), ``pipeline.judge_every`` for a
    video's sample."""
    privacy = settings.pipeline.privacy
    why = judge_status(settings)
    if why is not None:
        return JudgeSummary(status="not judged", reason=why, privacy=privacy)
    totals = judge_totals([f.judge for f in faces])
    return JudgeSummary(
        status="judged",
        name=judge.NAME,
        threshold=judge.THRESHOLD,
        privacy=privacy,
        totals=totals,
        every=every,
        repaired_judge_linked=sum(f.action.endswith(f":{JUDGE_LINKED}") for f in faces),
        seconds_per_face=round(seconds / totals.faces, 4) if seconds and totals.faces else None,
    )


def by_frame_of(records: Sequence[FaceRecord]) -> dict[int, list[FaceRecord]]:
    """Records grouped by frame index."""
    g: dict[int, list[FaceRecord]] = defaultdict(list)
    for r in records:
        g[r.frame].append(r)
    return g
