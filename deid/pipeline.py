"""The de-identification pipeline: decode, detect, crop, classify, attack, paste back, encode.

Each stage is a small function over the types of :mod:`deid.types`; :func:`process_frames`
composes them for a batch of frames (the unit a service chunk also uses), and :func:`run`
drives a whole video, image or folder and writes the report. No maths lives here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from deid import __version__
from deid.align import crop_faces, gray_like, is_gray, obscure, paste_back
from deid.attacks import DEFAULT_TARGET, AttackResult, build_attack
from deid.attacks.base import Attack
from deid.config import Settings
from deid.detect import MTCNNDetector
from deid.errors import ConfigError, DeidError, InputError, OutputError, PartialFailure
from deid.io import (
    IMAGE_EXTS,
    check_run,
    check_video,
    list_images,
    read_image,
    report_path,
    tmp_beside,
    write_image,
    write_text,
    writing,
)
from deid.models import FaceClassifier, load_classifier
from deid.targets import TARGET_MODES, choose_targets
from deid.types import Detections, FaceCrop

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeidError(
            f"device {name!r} requested but CUDA is not available; use --device cpu or auto"
        )
    return torch.device(name)


@dataclass
class Resources:
    """What a process loads once and reuses for every job: models and the attack."""

    settings: Settings
    device: torch.device
    detector: MTCNNDetector
    classifier: FaceClassifier
    attack: Attack
    target_mode: str | int

    @classmethod
    def load(cls, settings: Settings) -> Resources:
        if settings.pipeline.threads:
            torch.set_num_threads(settings.pipeline.threads)
        device = resolve_device(settings.pipeline.device)
        d = settings.detector
        detector = MTCNNDetector.from_config(d, device)
        classifier = load_classifier(settings.classifier.name, device)
        attack = build_attack(settings.attack)
        mode = resolve_target(
            settings.attack.target, settings.attack.name, classifier.meta.class_names
        )
        return cls(settings, device, detector, classifier, attack, mode)


def resolve_target(target: str | int | None, attack: str, class_names: Sequence[str]) -> str | int:
    """The target mode, or a class id for a fixed identity given by id or name."""
    if target is None:
        return DEFAULT_TARGET[attack]
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        t = int(target)
        if not 0 <= t < len(class_names):
            raise ConfigError(f"attack.target: class id {t} out of range 0..{len(class_names) - 1}")
        return t
    if target in TARGET_MODES:
        return target
    if target in class_names:
        return list(class_names).index(target)
    raise ConfigError(
        f"attack.target: unknown target {target!r}; expected one of {list(TARGET_MODES)}, "
        f"a class id 0..{len(class_names) - 1} or a class name such as {class_names[0]!r}"
    )


class Timer:
    """Seconds spent per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------
def detect(detector: MTCNNDetector, frames: Sequence[np.ndarray]) -> list[Detections]:
    """Stage: faces of every frame (one batched detector call)."""
    return detector.detect(frames)


def crop(
    frames: Sequence[np.ndarray], dets: Sequence[Detections], classifier: FaceClassifier
) -> list[FaceCrop]:
    """Stage: native-resolution crops with their alignment, by the classifier's crop convention."""
    return crop_faces(
        frames, dets, np.asarray(classifier.meta.template), tuple(classifier.meta.input_size)
    )


def to_batch(crops: Sequence[FaceCrop], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack crops of different sizes: (B, 3, H, W) float in [0, 1], edge-padded at the bottom
    and right, and (B, 2, 3) alignments adjusted for the padding."""
    hmax = max(c.pixels.shape[0] for c in crops)
    wmax = max(c.pixels.shape[1] for c in crops)
    x = torch.zeros((len(crops), 3, hmax, wmax))
    thetas = []
    for i, c in enumerate(crops):
        h, w = c.pixels.shape[:2]
        # edge padding: samples near a frame-clipped border see what a single crop would
        padded = np.pad(c.pixels, ((0, hmax - h), (0, wmax - w), (0, 0)), mode="edge")
        x[i] = torch.from_numpy(padded).permute(2, 0, 1).float().div_(255.0)
        # region-normalised n -> padded-normalised (n + 1) * w / W - 1
        a = np.array([[w / wmax, 0, w / wmax - 1], [0, h / hmax, h / hmax - 1], [0, 0, 1]])
        thetas.append((a @ np.vstack([c.theta, [0, 0, 1]]))[:2])
    return x.to(device), torch.tensor(np.stack(thetas), dtype=torch.float32, device=device)


def _chunks(crops: Sequence[FaceCrop], size: int) -> Iterator[list[int]]:
    """Indices of crops in batches of similar size (less padding)."""
    order = sorted(
        range(len(crops)), key=lambda i: crops[i].pixels.shape[0] * crops[i].pixels.shape[1]
    )
    for i in range(0, len(order), size):
        yield order[i : i + size]


@torch.no_grad()
def classify(
    classifier: FaceClassifier,
    crops: Sequence[FaceCrop],
    device: torch.device,
    batch_size: int = 64,
) -> torch.Tensor:
    """Stage: (N, K) logits of the clean crops."""
    out = torch.zeros((len(crops), classifier.num_classes))
    for idx in _chunks(crops, batch_size):
        x, theta = to_batch([crops[i] for i in idx], device)
        out[idx] = classifier(x, theta).float().cpu()
    return out


class TargetMemory:
    """Keeps a face's target while its box overlaps the same face in the previous frame
    (simple IoU association; full tracking comes later)."""

    def __init__(self, iou: float = 0.3) -> None:
        self.iou = iou
        self.prev: list[tuple[np.ndarray, int, int]] = []  # (box, track, target)
        self.next_track = 0

    def assign(
        self, frame_crops: Sequence[FaceCrop], proposed: torch.Tensor, preds: torch.Tensor
    ) -> torch.Tensor:
        """Targets for one frame's faces; sets each crop's ``track``."""
        targets = proposed.clone()
        taken: set[int] = set()
        current = []
        for j, c in enumerate(frame_crops):
            best, best_iou = -1, self.iou
            for k, (box, _track, _t) in enumerate(self.prev):
                o = iou(c.box, box)
                if k not in taken and o >= best_iou:
                    best, best_iou = k, o
            if best >= 0 and self.prev[best][2] != int(preds[j]):
                taken.add(best)
                c.track = self.prev[best][1]
                targets[j] = self.prev[best][2]
            else:
                if best >= 0:
                    taken.add(best)
                c.track = self.prev[best][1] if best >= 0 else self._new()
            current.append((c.box, c.track, int(targets[j])))
        self.prev = current
        return targets

    def _new(self) -> int:
        self.next_track += 1
        return self.next_track - 1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class FaceOutcome:
    """The attack's result for one face."""

    pixels: np.ndarray  # (h, w, 3) uint8
    success: bool
    steps: int
    pred: int
    target: int
    final: int
    final_conf: float
    norms: dict[str, float]
    psnr: float

    def record(self, names: Sequence[str], fallback: str) -> dict[str, Any]:
        """The report fields of this outcome (``names``: the classifier's class names;
        ``fallback``: how a failed face is obscured)."""
        return {
            "target": names[self.target],
            "success": self.success,
            "action": "attacked" if self.success else f"obscured:{fallback}",
            "steps": self.steps,
            "final": names[self.final],
            "final_conf": round(self.final_conf, 4),
            "l2": round(self.norms["l2"], 5),
            "linf": round(self.norms["linf"], 5),
            "psnr": round(self.psnr, 2) if math.isfinite(self.psnr) else None,
        }


class GreyInput(nn.Module):
    """The classifier seeing only the luma of its input, for faces of grey frames: the
    gradient's sign is then the same in the three channels, so sign steps stay grey."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("w", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x * self.w.to(x)).sum(1, keepdim=True).expand(-1, 3, -1, -1))

    def select(self, idx: torch.Tensor) -> GreyInput:
        sel = getattr(self.model, "select", None)
        return GreyInput(sel(idx)) if callable(sel) else self


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def attack_faces(
    attack: Attack,
    classifier: FaceClassifier,
    crops: Sequence[FaceCrop],
    targets: torch.Tensor,
    preds: torch.Tensor,
    device: torch.device,
    batch_size: int,
) -> list[FaceOutcome]:
    """Stage: attack every crop (faces of several frames in one batch) at native resolution.

    Faces of grey frames (three equal channels) are attacked through :class:`GreyInput` and
    made exactly grey afterwards (coloured noise on a grey frame would give the attack away);
    one that is no longer its target once grey counts as failed, so it is obscured.
    """
    outcomes: list[FaceOutcome | None] = [None] * len(crops)
    grey = [is_gray(c.pixels) for c in crops]
    for g in (False, True):
        members = [i for i in range(len(crops)) if grey[i] == g]
        for sub in _chunks([crops[i] for i in members], batch_size) if members else ():
            idx = [members[k] for k in sub]
            x, theta = to_batch([crops[i] for i in idx], device)
            t = targets[idx].to(device)
            model = classifier.bind(theta)
            r: AttackResult = attack(GreyInput(model) if g else model, x, t)
            adv, success, logits = _to_uint8(r.images), r.success.cpu(), r.logits
            if g:
                adv = np.stack([gray_like(a) for a in adv])
                with torch.no_grad():
                    logits = model(
                        torch.from_numpy(adv).permute(0, 3, 1, 2).float().div(255).to(device)
                    )
                success = success & (logits.argmax(1) == t).cpu()
            probs = torch.softmax(logits.float(), 1).cpu()
            for j, i in enumerate(idx):
                h, w = crops[i].pixels.shape[:2]
                px = adv[j, :h, :w]
                mse = (
                    float(
                        np.mean((px.astype(np.float32) - crops[i].pixels.astype(np.float32)) ** 2)
                    )
                    / 255.0**2
                )
                outcomes[i] = FaceOutcome(
                    pixels=px,
                    success=bool(success[j]),
                    steps=int(r.steps[j]),
                    pred=int(preds[i]),
                    target=int(targets[i]),
                    final=int(probs[j].argmax()),
                    final_conf=float(probs[j].max()),
                    norms={k: float(v[j]) for k, v in r.norms.items()},
                    psnr=float("inf") if mse == 0 else 10 * math.log10(1.0 / mse),
                )
    return [o for o in outcomes if o is not None]


# --------------------------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------------------------
@dataclass
class StreamState:
    """State carried from one batch of frames to the next (target memory, RNG, counters)."""

    memory: TargetMemory
    generator: torch.Generator
    frame_offset: int = 0
    too_small: int = 0  # frames too small for the detector (passed through)
    thumbnails: list[dict[str, Any]] = field(default_factory=list)
    max_thumbnails: int = 24


def new_state(settings: Settings) -> StreamState:
    return StreamState(
        TargetMemory(settings.tracking.iou),
        torch.Generator().manual_seed(settings.pipeline.seed),
    )


def process_frames(
    frames: list[np.ndarray], res: Resources, state: StreamState, timer: Timer
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """De-identify a batch of RGB frames. Returns the new frames and one record per face."""
    names = res.classifier.meta.class_names
    state.too_small += sum(res.detector.too_small(f.shape) for f in frames)
    with timer("detect"):
        dets = detect(res.detector, frames)
    with timer("crop"):
        crops = crop(frames, dets, res.classifier)
    out = [f.copy() for f in frames]
    records: list[dict[str, Any]] = []
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
        outcomes = attack_faces(
            res.attack,
            res.classifier,
            crops,
            targets,
            preds,
            res.device,
            res.settings.attack.batch_size,
        )
    with timer("paste"):
        for i, (c, o) in enumerate(zip(crops, outcomes, strict=True)):
            if o.success:
                paste_back(out[c.frame], c, o.pixels)
            else:
                obscure(out[c.frame], c, res.settings.pipeline.fallback)
            rec = {
                "frame": state.frame_offset + c.frame,
                "box": [round(float(v), 1) for v in c.box],
                "region": list(c.region),
                "score": round(c.score, 4),
                "track": c.track,
                "pred": names[o.pred],
                "pred_conf": round(float(probs[i, o.pred]), 4),
                **o.record(names, res.settings.pipeline.fallback),
                "_theta": c.theta.tolist(),
                "_corners": c.extra["corners"].tolist(),
            }
            records.append(rec)
            if len(state.thumbnails) < state.max_thumbnails:
                x1, y1, x2, y2 = c.region
                state.thumbnails.append(
                    {**rec, "before": c.pixels, "after": out[c.frame][y1:y2, x1:x2].copy()}
                )
    state.frame_offset += len(frames)
    return out, records


# --------------------------------------------------------------------------------------------
# verification on the written file
# --------------------------------------------------------------------------------------------
def detect_around(
    detector: MTCNNDetector,
    frames: Sequence[np.ndarray],
    by_frame: dict[int, list[dict[str, Any]]],
    context: float = 0.5,
) -> list[Detections]:
    """Re-detect faces only in windows around the faces a frame is known to hold.

    Each window is the face's crop region grown by ``context`` of its side on every side;
    detections are mapped back to frame coordinates and duplicates from overlapping windows
    (box IoU > 0.5) dropped. Several times cheaper than a full-frame pass on large frames.
    """
    windows: list[np.ndarray] = []
    where: list[tuple[int, int, int]] = []
    for fi, recs in by_frame.items():
        fh, fw = frames[fi].shape[:2]
        for r in recs:
            x1, y1, x2, y2 = r["region"]
            m = round(context * max(x2 - x1, y2 - y1))
            wx1, wy1 = max(0, x1 - m), max(0, y1 - m)
            wx2, wy2 = min(fw, x2 + m), min(fh, y2 + m)
            windows.append(frames[fi][wy1:wy2, wx1:wx2])
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
    records: Sequence[dict[str, Any]],
    res: Resources,
    first_frame: int,
) -> int:
    """Re-classify the written faces (in place: adds ``verified`` to each record).

    Returns the number of faces the re-detection found that match no processed face (always
    0 with ``pipeline.verify_detect: around``, which only looks near processed faces).

    Two readings per face: the *same crop* as at attack time (did the perturbation survive
    encoding?) and a fresh *re-detection* matched by box overlap (what a recogniser running
    its own detector on the published file would see).
    """
    names = res.classifier.meta.class_names
    by_frame = {fi - first_frame: recs for fi, recs in _group(records).items()}
    if res.settings.pipeline.verify_detect == "full":
        dets = detect(res.detector, frames)
    else:
        dets = detect_around(res.detector, frames, by_frame)
    crops = crop(frames, dets, res.classifier)
    redet_preds = (
        classify(res.classifier, crops, res.device).argmax(1)
        if crops
        else torch.zeros(0, dtype=torch.long)
    )
    same: list[FaceCrop] = []
    owners: list[dict[str, Any]] = []
    for fi, recs in by_frame.items():
        for r in recs:
            same.append(_record_crop(r, frames[fi], fi))
            owners.append(r)
    same_preds = (
        classify(res.classifier, same, res.device).argmax(1)
        if same
        else torch.zeros(0, dtype=torch.long)
    )
    for r, p in zip(owners, same_preds.tolist(), strict=True):
        v: dict[str, Any] = {"same_crop": names[p]}
        fi = r["frame"] - first_frame
        best, best_iou = None, 0.3
        for c, q in zip(crops, redet_preds.tolist(), strict=True):
            if c.frame == fi and (o := iou(c.box, np.asarray(r["box"]))) >= best_iou:
                best, best_iou = names[q], o
        v["redetected"] = best  # None: the detector no longer finds this face
        v["is_target"] = v["same_crop"] == r["target"] and best in (None, r["target"])
        v["is_original"] = v["same_crop"] == r["pred"] or best == r["pred"]
        r["verified"] = v
    matched = sum(
        1
        for c in crops
        if any(iou(c.box, np.asarray(r["box"])) >= 0.3 for r in by_frame.get(c.frame, []))
    )
    return len(crops) - matched


def _record_crop(r: dict[str, Any], frame: np.ndarray, index: int = 0) -> FaceCrop:
    """The :class:`FaceCrop` a face record was attacked at, cut from ``frame`` (a re-read one)."""
    x1, y1, x2, y2 = r["region"]
    return FaceCrop(
        frame=index,
        face=0,
        region=(x1, y1, x2, y2),
        pixels=frame[y1:y2, x1:x2].copy(),
        theta=np.asarray(r["_theta"], np.float32),
        box=np.asarray(r["box"], np.float32),
        extra={"corners": np.asarray(r["_corners"], np.float32)},
    )


def _needs_repair(r: dict[str, Any]) -> bool:
    return r["action"] == "attacked" and bool(r.get("verified", {}).get("is_original"))


def repair_frames(
    frames: list[np.ndarray], records: Sequence[dict[str, Any]], res: Resources, first_frame: int
) -> int:
    """Fail closed on the written file: obscure every face still recognised as itself."""
    n = 0
    for r in records:
        if _needs_repair(r):
            frame = frames[r["frame"] - first_frame]
            obscure(frame, _record_crop(r, frame), res.settings.pipeline.fallback)
            r["action"] = f"repaired:{res.settings.pipeline.fallback}"
            n += 1
    return n


# --------------------------------------------------------------------------------------------
# drivers: video, image, folder
# --------------------------------------------------------------------------------------------
def _group(records: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    g: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        g[r["frame"]].append(r)
    return g


def process_image(
    input: Path, output: Path, res: Resources, state: StreamState, timer: Timer
) -> list[dict[str, Any]]:
    """De-identify one image file into ``output`` (verified on the written file, then renamed)."""
    p = res.settings.pipeline
    with timer("decode"):
        img = read_image(input)
    out, recs = process_frames([img], res, state, timer)
    tmp = tmp_beside(output, "pass1")
    try:
        with timer("encode"), writing(output):
            write_image(tmp, out[0], quality=p.jpeg_quality)
        if p.verify and recs:
            with timer("verify"):
                written = read_image(tmp)
                verify_frames([written], recs, res, recs[0]["frame"])
            if p.repair and any(_needs_repair(r) for r in recs):
                repair_frames([written], recs, res, recs[0]["frame"])
                with writing(output):
                    write_image(tmp, written, quality=p.jpeg_quality)
        with writing(output):
            tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    for r in recs:
        r["file"] = str(input)
    return recs


def run_images(input: Path, output: Path, res: Resources, progress: bool = True) -> dict[str, Any]:
    """De-identify an image, or every image under a folder (the output mirrors the tree)."""
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
    records: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
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
            failed.append({"file": str(src), "error": e.reason})
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
    report = _report(
        kind, input, output, res, records, state.frame_offset, frames_with_faces, timer, state
    )
    report["failed_inputs"] = failed
    report["too_small_inputs"] = too_small
    return report


def _report(
    kind: str,
    input: Path,
    output: Path,
    res: Resources,
    records: list[dict[str, Any]],
    n_frames: int,
    frames_with_faces: int,
    timer: Timer,
    state: StreamState,
) -> dict[str, Any]:
    faces = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    totals = {
        "frames": n_frames,
        "frames_with_faces": frames_with_faces,
        "frames_without_faces": n_frames - frames_with_faces,
        "frames_too_small": state.too_small,
        **face_totals(faces),
        "unprotected_faces": sum(
            1
            for r in faces
            if r["action"] == "attacked" and r.get("verified", {}).get("is_original")
        ),
    }
    return {
        **report_header(kind, input, output, res),
        "totals": totals,
        "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
        "faces_detail": faces,
        "_thumbnails": state.thumbnails,
    }


def report_header(kind: str, input: Path, output: Path, res: Resources) -> dict[str, Any]:
    """The fields every report starts with: what ran, on what, with which settings."""
    cls = res.classifier.meta
    return {
        "deid_version": __version__,
        "kind": kind,
        "input": str(input),
        "output": str(output),
        "device": str(res.device),
        "classifier": {
            "name": res.settings.classifier.name,
            "dataset": cls.dataset,
            "accuracy": cls.accuracy.get("top1"),
        },
        "attack": res.settings.attack.model_dump(),
        "target_mode": res.target_mode,
        "settings": res.settings.model_dump(mode="json"),
    }


def face_totals(faces: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts and rates over face records that every report gives (image and video)."""
    attacked = [r for r in faces if r["success"]]
    verified = [r for r in faces if "verified" in r]
    psnrs = [r["psnr"] for r in attacked if r["psnr"] is not None]
    return {
        "faces": len(faces),
        "attack_succeeded": len(attacked),
        "fail_closed": len(faces) - len(attacked),
        "attack_success_rate": round(len(attacked) / len(faces), 4) if faces else None,
        "mean_psnr": round(float(np.mean(psnrs)), 2) if psnrs else None,
        "mean_linf": round(float(np.mean([r["linf"] for r in attacked])), 5) if attacked else None,
        "verified_faces": len(verified),
        "verified_target_rate": rate(verified, "is_target"),
        "verified_original_rate": rate(verified, "is_original"),
    }


def rate(rows: list[dict[str, Any]], key: str) -> float | None:
    return round(sum(bool(r["verified"][key]) for r in rows) / len(rows), 4) if rows else None


def run(
    input: Path | str,
    output: Path | str,
    settings: Settings,
    progress: bool = True,
    resources: Resources | None = None,
    contact_sheet: Path | None = None,
    show_originals: bool = False,
) -> dict[str, Any]:
    """De-identify a video, an image or a folder of images; write the output and its report.

    Args:
        contact_sheet: also write a PNG of the faces before and after (the *before* tiles
            pixelated, so the sheet holds no face clearer than the output).
        show_originals: the contact sheet's *before* tiles are the clear original faces (the
            sheet says so in its title and PNG metadata).

    Raises:
        InputError, OutputError, ConfigError: before anything is written (see
            :func:`deid.io.check_run`; a video that is not decodable or whose frames share
            timestamps: before the models load).
        PartialFailure: some images of a folder failed (the rest, and the report, are written).
    """
    input, output = Path(input), Path(output)
    kind = check_run(input, output, contact_sheet)
    if kind == "video" and resources is None:
        check_video(input)  # a video no job can be made of is refused before the models load
    res = resources or Resources.load(settings)
    t0 = time.perf_counter()
    if kind == "video":
        from deid.job import run_video  # the job's steps, in-process

        thumbs: list[dict[str, Any]] = []
        report = run_video(input, output, res, progress=progress, thumbnails=thumbs)
        report["_thumbnails"] = thumbs
    else:
        report = run_images(input, output, res, progress)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    frames = report["totals"]["frames"]
    report["fps"] = (
        round(frames / report["seconds"]["total"], 3) if report["seconds"]["total"] else None
    )
    thumbs = report.pop("_thumbnails")
    if contact_sheet is not None:
        from deid.report import contact_sheet as make_sheet

        with writing(Path(contact_sheet), "contact sheet"):
            make_sheet(
                thumbs,
                contact_sheet,
                title=f"{input.name}: {res.settings.attack.name}, {res.settings.classifier.name}",
                show_originals=show_originals,
            )
    write_text(report_path(output), json.dumps(report, indent=1) + "\n", "report")
    if report.get("failed_inputs"):
        raise PartialFailure([(f["file"], f["error"]) for f in report["failed_inputs"]])
    return report
