"""The artefacts of a run as pydantic models, and the one function that writes a report.

A video job hands these from step to step (:mod:`deid.pipeline.video`): the layout
(:func:`~deid.pipeline.video.split`), one :class:`Analysis` per chunk, the :class:`Plan`,
one :class:`ChunkReport` per rendered chunk and the :class:`RunReport`. An image run makes
the same :class:`FaceRecord` per face and the same :class:`RunReport`. The service ships
each artefact as JSON (``model_dump(mode="json")``) through Redis and its work folder and
reads it back with ``model_validate``; the steps' public functions take and return that JSON
form, so a step computes on equal inputs in one process or on any worker.

Fields a kind of run does not have (``kind`` of a face in an image, ``video`` of an image
report) are left unset and do not appear in the JSON (``exclude_unset``), so every report
keeps the keys it always had.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr

from deid.io import report_path, write_text

A = TypeVar("A", bound="Artefact")


class Artefact(BaseModel):
    """Base of every artefact: unknown keys are refused, and the JSON form (:meth:`wire`)
    leaves out the fields a run did not set."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def of(cls: type[A], value: A | dict[str, Any]) -> A:
        """``value`` as this model (validated when it is the JSON form)."""
        return value if isinstance(value, cls) else cls.model_validate(value)

    def wire(self) -> dict[str, Any]:
        """The JSON form (what the service stores and ships, and the report file holds)."""
        return self.model_dump(mode="json", exclude_unset=True)


# --------------------------------------------------------------------------------------------
# video job: layout, analysis, plan
# --------------------------------------------------------------------------------------------
class Chunk(Artefact):
    """Frames ``start .. stop-1`` (presentation order) of a job's input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    start: int
    stop: int

    def to_dict(self) -> dict[str, int]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        return cls(index=int(d["index"]), start=int(d["start"]), stop=int(d["stop"]))

    @property
    def frames(self) -> int:
        return self.stop - self.start


class Layout(Artefact):
    """What :func:`deid.pipeline.video.split` found: size, exact rate and time base, the
    timestamp of every frame (``seekable``: the container has them), rotation, audio, colour
    and the chunks."""

    input: str
    width: int
    height: int
    rate: str  # exact fraction, e.g. "30000/1001"
    fps: float
    duration: float | int | None
    time_base: str
    pts: list[int]
    seekable: bool
    frames: int
    rotation: int
    has_audio: bool
    chunks: list[Chunk]
    # (matrix, primaries, transfer) of the input (deid.io.VideoInfo.colour), kept by the
    # output; a plan from before it had none: [2, 2, 2], unspecified
    colour: list[int] = [2, 2, 2]
    # the input's pixel shape where not square ("4/3": anamorphic), kept by the output
    sample_aspect: str | None = None
    # "tff" / "bff": interlaced input (detected on one field; written interlaced)
    interlaced: str | None = None


class AnalysedFace(Artefact):
    """A detected face: box, score, the landmarks its crop was aligned with (box-based when
    the detector's are unusable, e.g. on profiles) and the classifier's logits."""

    box: list[float]
    score: float
    landmarks: list[list[float]]
    logits: list[float]


class Analysis(Artefact):
    """The faces of one chunk, per frame (:func:`deid.pipeline.video.analyse`)."""

    chunk: int
    start: int
    faces: list[list[AnalysedFace]]
    seconds: dict[str, float]


class PlannedFace(Artefact):
    """A face to protect in one frame: detected, or filled in by tracking."""

    track: int
    kind: Literal["detected", "interpolated", "extrapolated"]
    box: list[float]
    landmarks: list[list[float]]
    score: float
    pred: int
    pred_conf: float
    target: int


class TrackPlan(Artefact):
    """One track over the whole video: its span, how its faces came about, its identity and
    its one target (class ids)."""

    id: int
    first: int
    last: int
    detected: int
    interpolated: int
    extrapolated: int
    pred: int
    target: int
    best_score: float | None = None  # the detector's highest score in the track


class Plan(Artefact):
    """Tracks and the faces to protect in every frame (:func:`deid.pipeline.video.plan`).
    ``unconfirmed``: detections dropped because their track held none of ``min_score``."""

    frames: list[list[PlannedFace]]
    tracks: list[TrackPlan]
    unconfirmed: int = 0


# --------------------------------------------------------------------------------------------
# faces, chunk reports, run reports
# --------------------------------------------------------------------------------------------
class Verified(Artefact):
    """The classifier on the written file: the face's crop as attacked (``same_crop``) and a
    fresh re-detection matched by box overlap (``redetected``; None: not found again, or,
    with ``redetect`` false, not looked for: ``pipeline.verify_detect: none``)."""

    same_crop: str
    redetected: str | None
    redetect: bool = True
    is_target: bool
    is_original: bool


class FaceJudge(Artefact):
    """The independent judge (:mod:`deid.judge`) on the written file: the distance between the
    face's descriptor in the input and in the re-read output (at the face's crop region),
    whether it still links the two (distance < its threshold, 0.6), and whether the written
    face is ``natural`` (attacked, not obscured: not failed closed, not repaired).
    ``distance_before_repair``: the distance on the first written file, for a face that
    was obscured after verification (the other figures are the final file's)."""

    distance: float
    linked: bool
    natural: bool
    distance_before_repair: float | None = None


class FaceRecord(Artefact):
    """One protected face, in an image or a video frame: where, who, what was done, and what
    the written file shows. ``kind`` (detected or filled in by tracking) is a video's,
    ``file`` a folder run's; ``verified`` is set once the written file was checked."""

    frame: int
    track: int
    kind: Literal["detected", "interpolated", "extrapolated"] | None = None
    box: list[float]
    region: list[int]
    score: float
    pred: str
    pred_conf: float
    target: str
    success: bool
    # attacked | obscured:<fallback> | repaired:<fallback> (still recognised by the own
    # classifier) | repaired:<fallback>:judge-linked (strict privacy: the judge links it) |
    # repaired:black:judge-linked (strict: obscured, yet the judge still linked it)
    action: str
    steps: int
    final: str
    final_conf: float
    l2: float
    linf: float
    psnr: float | None
    verified: Verified | None = None
    judge: FaceJudge | None = None
    file: str | None = None
    # a multi-frame image's (a TIFF's pages, an animation's frames): the face's frame in it
    page: int | None = None

    # where the face was cut out and aligned (to re-cut it from the written file); not in
    # the report
    _theta: list[list[float]] = PrivateAttr(default_factory=list)
    _corners: list[list[float]] = PrivateAttr(default_factory=list)
    _id: int = PrivateAttr(-1)
    # the judge's descriptor of the original face (kept to judge the face again after a
    # repair); not in the report
    _original: np.ndarray | None = PrivateAttr(None)

    @property
    def rid(self) -> int:
        """The face's id within its chunk (its protected pixels' key while rendering)."""
        return self._id

    @property
    def original(self) -> np.ndarray | None:
        """The judge's descriptor of the face in the input (None: not described)."""
        return self._original

    def describe(self, descriptor: np.ndarray) -> None:
        """Remember the judge's descriptor of the face in the input."""
        self._original = descriptor

    @property
    def theta(self) -> np.ndarray:
        return np.asarray(self._theta, np.float32)

    @property
    def corners(self) -> np.ndarray:
        return np.asarray(self._corners, np.float32)

    def locate(self, theta: np.ndarray, corners: np.ndarray, rid: int = -1) -> FaceRecord:
        """Remember the crop's alignment (and the face's id within its chunk)."""
        self._theta, self._corners, self._id = theta.tolist(), corners.tolist(), rid
        return self

    def thumbnail(self, before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
        """The face for a contact sheet: its record as it is now, its pixels before and
        after."""
        return {**self.wire(), "before": before, "after": after}

    @property
    def attacked(self) -> bool:
        """Its protected pixels are in the output (not obscured)."""
        return self.action == "attacked"

    @property
    def needs_repair(self) -> bool:
        """Protected, yet the written file still shows the face as itself."""
        return self.attacked and self.verified is not None and self.verified.is_original

    @property
    def protected(self) -> bool:
        """Obscured, or attacked and not recognised as itself in the written file (or,
        without verification, attacked successfully)."""
        if not self.attacked:
            return True
        return self.success if self.verified is None else not self.verified.is_original


class JudgeTotals(Artefact):
    """The judge's figures over a set of faces (a run, a track): faces judged, linked,
    ``unlinkable`` (share not linked), ``natural`` (attacked, not obscured),
    ``natural_unlinkable`` (share of all judged faces that are both natural and unlinkable:
    protected without hiding the face), ``linked_natural`` (faces linked *and* left natural:
    what strict privacy leaves none of) and the median distance."""

    faces: int
    linked: int
    unlinkable: float | None
    natural: int
    natural_unlinkable: float | None
    linked_natural: int
    median_distance: float | None


def judge_totals(faces: Sequence[FaceJudge | None]) -> JudgeTotals:
    """:class:`JudgeTotals` of the judged faces among ``faces`` (None: not judged)."""
    js = [f for f in faces if f is not None]
    n = len(js)
    return JudgeTotals(
        faces=n,
        linked=sum(f.linked for f in js),
        unlinkable=rate([not f.linked for f in js]),
        natural=sum(f.natural for f in js),
        natural_unlinkable=rate([f.natural and not f.linked for f in js]),
        linked_natural=sum(f.natural and f.linked for f in js),
        median_distance=round(float(np.median([f.distance for f in js])), 3) if n else None,
    )


class JudgeSummary(Artefact):
    """The judge in a run's report: ``status`` "judged" (with its name, threshold, the
    privacy mode, the totals, ``every`` (1: every face judged; n: a sample of each track's
    faces, see ``pipeline.judge_every``), the faces obscured because it linked them and the
    seconds it took per judged face) or "not judged" (with the ``reason``)."""

    status: Literal["judged", "not judged"]
    reason: str | None = None
    name: str | None = None
    threshold: float | None = None
    privacy: Literal["standard", "strict"]
    totals: JudgeTotals | None = None
    # videos: the judge measured each track's first face and every n-th after it
    # (``pipeline.judge_every``; 1: every face); images: every face
    every: int | None = None
    repaired_judge_linked: int | None = None
    seconds_per_face: float | None = None


class Coverage(Artefact):
    """Per frame: faces to protect, and faces protected."""

    faces: list[int]
    protected: list[int]


class ChunkReport(Artefact):
    """What rendering one chunk did (:func:`deid.pipeline.video.render`)."""

    chunk: Chunk
    faces: list[FaceRecord]
    coverage: Coverage
    repaired: int
    seconds: dict[str, float]


class ClassifierInfo(Artefact):
    name: str
    dataset: str | None
    accuracy: float | None


class Totals(Artefact):
    """Counts and rates of a run (the video-only ones unset in an image report)."""

    frames: int
    frames_with_faces: int
    frames_without_faces: int
    frames_too_small: int
    faces: int
    attack_succeeded: int
    fail_closed: int
    attack_success_rate: float | None
    mean_psnr: float | None
    mean_linf: float | None
    verified_faces: int
    verified_target_rate: float | None
    verified_original_rate: float | None
    faces_detected: int | None = None
    faces_interpolated: int | None = None
    faces_extrapolated: int | None = None
    tracks: int | None = None
    # detections under detector.min_score in tracks none of whose faces reached it: dropped
    detections_unconfirmed: int | None = None
    deidentified_on_output_rate: float | None = None
    repaired: int | None = None
    unprotected_faces: int
    frames_with_unprotected_face: int | None = None
    target_changes_within_tracks: int | None = None


class VideoSummary(Artefact):
    """Input and output of a video, side by side."""

    fps_in: float
    fps_out: float
    frames_in: int
    frames_out: int
    duration_in: float | int | None
    duration_out: float | int | None
    width: int
    height: int
    rotation: int
    audio_in: bool
    audio_out: bool
    crf: int
    chunks: int


class TrackReport(Artefact):
    """A track of the plan with names for its identity and target, and what became of its
    faces."""

    id: int
    first: int
    last: int
    detected: int
    interpolated: int
    extrapolated: int
    pred: str
    target: str
    best_score: float | None = None
    targets_used: list[str]
    attacked: int
    obscured: int
    verified_target: int
    judge: JudgeTotals | None = None


class FailedInput(Artefact):
    file: str
    error: str


class RunReport(Artefact):
    """The report of a run: one schema for an image, a folder and a video (``kind``)."""

    deid_version: str
    kind: Literal["image", "folder", "video"]
    input: str
    output: str
    device: str
    #: what ``pipeline.precision`` resolved to on this device (the attack's gradient passes)
    gradient_precision: Literal["float32", "bfloat16"] = "float32"
    classifier: ClassifierInfo
    attack: dict[str, Any]
    target_mode: str | int
    settings: dict[str, Any]
    totals: Totals
    video: VideoSummary | None = None
    coverage: Coverage | None = None
    tracks: list[TrackReport] | None = None
    judge: JudgeSummary | None = None
    seconds: dict[str, float]
    faces_detail: list[FaceRecord]
    failed_inputs: list[FailedInput] | None = None
    too_small_inputs: list[str] | None = None
    fps: float | None = None
    job: dict[str, Any] | None = None  # a service job's id and chunk count


def face_totals(faces: Sequence[FaceRecord]) -> dict[str, Any]:
    """Counts and rates over face records that every report gives (image and video)."""
    attacked = [r for r in faces if r.success]
    verified = [r.verified for r in faces if r.verified is not None]
    psnrs = [r.psnr for r in attacked if r.psnr is not None]
    return {
        "faces": len(faces),
        "attack_succeeded": len(attacked),
        "fail_closed": len(faces) - len(attacked),
        "attack_success_rate": round(len(attacked) / len(faces), 4) if faces else None,
        "mean_psnr": round(float(np.mean(psnrs)), 2) if psnrs else None,
        "mean_linf": round(float(np.mean([r.linf for r in attacked])), 5) if attacked else None,
        "verified_faces": len(verified),
        "verified_target_rate": rate([v.is_target for v in verified]),
        "verified_original_rate": rate([v.is_original for v in verified]),
    }


def rate(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def write_report(output: Path | str, report: RunReport | dict[str, Any]) -> Path:
    """Write the report of ``output`` beside it (``out.mp4`` -> ``out.report.json``),
    atomically; the one place a run's report is written (``deid run``, the service)."""
    path = report_path(Path(output))
    data = report.wire() if isinstance(report, RunReport) else report
    write_text(path, json.dumps(data, indent=1) + "\n", "report")
    return path
