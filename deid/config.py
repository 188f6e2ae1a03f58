"""Configuration: pydantic models, YAML files in ``configs/``, ``DEID_...`` environment on top.

Layers, each over the one before (see :func:`load_settings`): deid's defaults <
``configs/default.yaml`` < a ``--config`` YAML < the environment < explicit overrides (CLI
flags). Sections merge key by key. Nested fields use ``__`` in the environment:
``DEID_ATTACK__EPS=0.03``. A bad value is reported with where it came from.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from deid.attacks.registry import ATTACKS, AttackConfig, default_attack
from deid.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: MTCNN's own P/R/O-Net thresholds (facenet-pytorch's defaults): deid's data preparation and
#: its utility check detect with these; the pipeline's default takes R-Net's down to 0.6.
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)


class DetectorConfig(_Strict):
    """Which face detector, and how it searches. Drone faces are small: the default looks
    for faces from 12 px on a copy of the frame enlarged 2x (README "Detection at drone
    altitude"); deid's own detectors for large faces (template estimation, dataset
    preparation, the held-out utility check) set ``upscale: 1``.

    ``name`` picks a detector of :data:`deid.detect.DETECTORS` (MTCNN by default);
    ``thresholds`` are MTCNN's own, the other keys apply to every detector built on
    :class:`deid.detect.tiling.TiledDetector`.
    """

    name: str = Field("mtcnn", description="the face detector: a name in deid.detect.DETECTORS")
    min_face_size: int = Field(12, ge=8, le=1000)
    thresholds: tuple[float, float, float] = (0.6, 0.6, 0.7)
    min_score: float = Field(0.85, ge=0.0, le=1.0)
    track_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="videos: a detection scoring from this up to min_score is kept only in a "
        "track that also holds one of min_score or more (hysteresis: a small face the detector "
        "is unsure of in some frames stays detected there); null, or min_score or more: off",
    )
    recheck_score: float | None = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="a detection scoring from this up to min_score gets a second look: its "
        "surroundings enlarged so that the face is 48 px, searched again; kept when the look "
        "scores min_score (deid.detect.tiling.TiledDetector.second_look); null: no second look",
    )
    confirm_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="the score a second look must reach (null: min_score); video analysis, "
        "which lowers min_score to track_score, keeps it at min_score",
    )
    max_side: int | None = Field(
        None, ge=160, description="detect on a copy downscaled to this side"
    )
    tile: int | None = Field(
        2048,
        ge=160,
        description="frames larger than this (4K) are detected in overlapping full-resolution "
        "windows of at most this side, plus one small overview pass; null: no tiling",
    )
    tile_overlap: int = Field(
        128,
        ge=0,
        le=2048,
        description="px shared by neighbouring tiles (faces up to this size lie whole in one)",
    )
    edge_pad: int = Field(
        0,
        ge=0,
        le=512,
        description="px of mirror padding before detection: finds faces cut by the frame edge",
    )
    batch_frames: int = Field(8, ge=1, le=256, description="frames per detection batch")
    factor: float = Field(
        0.709, gt=0.5, lt=0.95, description="MTCNN's image-pyramid scale step (its own)"
    )
    upscale: float = Field(
        2.0,
        ge=1.0,
        le=4.0,
        description="frames detected at full resolution (not tiled) are searched on a bicubic "
        "copy enlarged by this factor: small faces are found more often",
    )
    pyramid: Literal["enlarged", "frame"] = Field(
        "enlarged",
        description="MTCNN on an enlarged frame: its first stage's pyramid levels are "
        "resampled from the enlarged copy, or from the frame itself (a quarter of the pixels "
        "to read at upscale 2; 13-22% less detection time, a few more faces of 16-24 px "
        "missed on the drone stills)",
    )
    stretch_range: float | None = Field(
        120,
        ge=1,
        le=255,
        description="a frame whose 1st-99th percentile grey levels span less than this (dusk, "
        "haze, fog) is detected on a copy stretched to 0-255 (deid.detect.light): 4 pedestrian "
        "frames, 28 faces: dark 22-26 -> 27-28, foggy 0-8 -> 24-27; null: off",
    )
    turns: list[float] = Field(
        default_factory=list,
        max_length=7,
        description="angles (degrees counter-clockwise) by which each frame is also searched "
        "turned, for faces turned in the image plane (people lying down, seen from above): "
        "[90, 180, 270] finds faces at any angle for four times the detection time "
        "(deid.detect.turns); []: the frame as it is only",
    )
    keyframe_interval: int = Field(
        1,
        ge=1,
        le=300,
        description="videos: every n-th frame of a chunk is detected in full, the frames in "
        "between only around known faces, changed regions and entering edges, in full again "
        "when a face is lost (deid.pipeline.keyframes); 1: every frame in full",
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from deid.detect.registry import DETECTORS  # detectors register on import

        if v not in DETECTORS:
            raise ValueError(f"unknown detector {v!r}; available: {sorted(DETECTORS)}")
        return v

    @field_validator("thresholds")
    @classmethod
    def _in_unit(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0.0 < t < 1.0 for t in v):
            raise ValueError(f"each threshold must be in (0, 1), got {list(v)}")
        return v

    @field_validator("turns")
    @classmethod
    def _angles(cls, v: list[float]) -> list[float]:
        out: list[float] = []
        for t in v:
            if not -360 < t < 360 or t % 360 == 0:
                raise ValueError(
                    f"each turn must be an angle in degrees, not 0, in (-360, 360); got {t}"
                )
            if t % 360 in [o % 360 for o in out]:
                raise ValueError(f"turn {t} is listed twice")
            out.append(float(t))
        return out

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> DetectorConfig:
        if self.tile is not None and self.tile_overlap >= self.tile:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be smaller than tile ({self.tile})"
            )
        return self

    def for_tracks(self) -> DetectorConfig:
        """The settings video analysis detects with: faces down to ``track_score`` (MTCNN's
        last stage no stricter), which :func:`deid.pipeline.tracking.plan_tracks` keeps only
        in tracks confirmed by a face of ``min_score``. On whole frames without ``edge_pad``
        the faces of ``min_score`` and more are exactly this detector's (MTCNN's and deid's
        merging keep the stronger of overlapping boxes); in tiled (4K) or padded frames a
        weaker box more inside the frame or window can stand in for a stronger one over the
        same face."""
        if self.track_score is None or self.track_score >= self.min_score:
            return self
        p, r, o = self.thresholds
        return self.model_copy(
            update={
                "min_score": self.track_score,
                "thresholds": (p, r, min(o, self.track_score)),
                "confirm_score": (
                    self.min_score if self.confirm_score is None else self.confirm_score
                ),
            }
        )


class ClassifierConfig(_Strict):
    """Which identity classifier: a shipped name (``yaleb-mlp``, ``celeba-cnn``) or a path."""

    name: str = "celeba-cnn"


#: ``pipeline.precision``: an attack's gradient passes (:mod:`deid.models.precision`)
Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


class PipelineConfig(_Strict):
    """How frames flow through the stages."""

    fallback: Literal["pixelate", "blur", "black"] = "pixelate"
    verify: bool = Field(True, description="re-read the output and re-classify its faces")
    repair: bool = Field(True, description="obscure faces still recognised in the written output")
    judge: Literal["auto", "on", "off"] = Field(
        "auto",
        description="the independent judge (dlib's face recognizer, `pip install 'deid[judge]'`) "
        "on the re-read output, per face in the report: auto (when installed), on (an error "
        "without it), off",
    )
    privacy: Literal["standard", "strict"] = Field(
        "standard",
        description="strict: also obscure every face the judge still links to its original "
        "in the written output (needs the judge, verify and repair)",
    )
    judge_every: int = Field(
        1,
        ge=1,
        le=10_000,
        description="videos: the judge measures the first face of each track and every n-th "
        "after it (a sample the report names; the judge costs two descriptors a face, about "
        "as much as detection); 1: every face. Strict privacy judges every face",
    )
    verify_detect: Literal["around", "full", "none"] = Field(
        "around",
        description="re-detect around each processed face (fast), on whole frames (also "
        "counts faces the first pass missed), or none: re-classify only the crop each face "
        "was protected at (one re-read and one batched classification, the cheapest check; "
        "it does not see the face as a recogniser running its own detector would)",
    )
    crf: int = Field(18, ge=0, le=51, description="H.264 constant rate factor of video output")
    jpeg_quality: int = Field(95, ge=1, le=100)
    chunk_frames: int = Field(
        240,
        ge=1,
        le=100_000,
        description="frames per video chunk (a service task; also the unit of `deid run`, so "
        "both give the same bytes)",
    )
    seed: int = 0
    device: str = "auto"
    precision: Precision = Field(
        "auto",
        description="the classifier's precision in an attack's gradient passes: bfloat16 "
        "(a channels-last copy of the network; 2.5x faster on a CPU with AVX512-BF16) or float32; "
        "auto: bfloat16 where the device has it natively. Every decision (early stop, "
        "success, verification) is taken in float32",
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="torch CPU threads (None: torch default)"
    )
    judge_workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description="processes the judge's descriptors are computed in (dlib's network runs "
        "on one core); None: one per usable CPU; 1: in deid's own process",
    )
    workers: int | None = Field(
        1,
        ge=1,
        le=256,
        description="processes that analyse and render a video's chunks in `deid run` (each "
        "loads the models; torch's threads and the judge's processes are shared out among "
        "them); None: one per usable CPU; at most one per chunk. The output is the same",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be one of 'auto', 'cpu', 'cuda', 'cuda:N'; got {v!r}")

    @model_validator(mode="after")
    def _strict_needs(self) -> PipelineConfig:
        if self.privacy == "strict":
            off = [
                k
                for k, bad in (
                    ("verify: false", not self.verify),
                    ("repair: false", not self.repair),
                    ("judge: off", self.judge == "off"),
                    (f"judge_every: {self.judge_every}", self.judge_every != 1),
                )
                if bad
            ]
            if off:
                raise ValueError(
                    "privacy: strict obscures the faces the judge links on the re-read output, "
                    "so it needs verify, repair and the judge on every face; got "
                    f"{', '.join(off)}"
                )
        return self


class TrackingConfig(_Strict):
    """How faces are linked across video frames (see :mod:`deid.pipeline.tracking`)."""

    iou: float = Field(0.3, gt=0.0, le=1.0, description="box overlap that links a detection")
    max_gap: int = Field(
        5, ge=0, le=300, description="frames a missed face stays protected at its predicted box"
    )
    extend: int = Field(
        2, ge=0, le=60, description="frames covered before a track's first / after its last"
    )
    margin: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="a fail-closed face is obscured over its box grown by this share per side",
    )


class ServiceConfig(_Strict):
    """The job service (``deid worker``, ``deid serve``, ``deid submit``): broker, storage, limits.

    ``DEID_BROKER_URL`` and ``DEID_STORAGE_ROOTS`` (comma- or ``os.pathsep``-separated) are
    accepted as short forms of ``DEID_SERVICE__BROKER_URL`` / ``DEID_SERVICE__STORAGE_ROOTS``.
    """

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str | None = Field(None, description="None: the broker's Redis")
    storage_roots: list[Path] = Field(
        default_factory=list, description="job inputs and outputs must lie under one of these"
    )
    shard_files: int = Field(16, ge=1, le=100_000, description="files per dataset shard")
    job_ttl: int = Field(7 * 86400, ge=60, description="seconds a job's state stays in Redis")
    token: SecretStr | None = Field(None, description="bearer token the HTTP API requires")
    max_deliveries: int = Field(
        3, ge=1, le=100, description="deliveries of a chunk before its job fails (poison chunk)"
    )
    soft_time_limit: int = Field(900, ge=1, description="seconds; the chunk fails cleanly")
    time_limit: int = Field(1000, ge=1, description="seconds; the worker process is killed")
    visibility_timeout: int = Field(
        1200, ge=1, description="seconds before an unacknowledged chunk goes to another worker"
    )
    restore_interval: int = Field(
        10, ge=1, description="seconds between sweeps that redeliver a dead worker's chunks"
    )
    max_memory_per_child: int = Field(
        12_000_000, ge=100_000, description="KiB of resident memory before a worker is replaced"
    )
    heartbeat_interval: float = Field(
        5.0, gt=0, le=300, description="seconds between a running step's heartbeats in Redis"
    )
    heartbeat_ttl: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds without a heartbeat before a step's worker is taken for dead and "
        "its chunk is delivered again (long before visibility_timeout)",
    )
    orphan_sweep_interval: int = Field(
        600,
        ge=1,
        description="seconds between sweeps for work folders of jobs Redis no longer knows",
    )
    max_request_bytes: int = Field(
        1 << 20, ge=1024, description="largest HTTP request body the API reads (413 above)"
    )

    @field_validator("storage_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p for p in v.replace(",", os.pathsep).split(os.pathsep) if p.strip()]
        return v

    @model_validator(mode="after")
    def _limits(self) -> ServiceConfig:
        if not self.soft_time_limit < self.time_limit < self.visibility_timeout:
            raise ValueError(
                "expected soft_time_limit < time_limit < visibility_timeout (a chunk must end "
                f"before it is redelivered), got {self.soft_time_limit}, {self.time_limit}, "
                f"{self.visibility_timeout}"
            )
        if self.heartbeat_ttl < 2 * self.heartbeat_interval:
            raise ValueError(
                "expected heartbeat_ttl >= 2 * heartbeat_interval (a worker must miss more "
                f"than one beat to be taken for dead), got {self.heartbeat_ttl}, "
                f"{self.heartbeat_interval}"
            )
        return self


class Settings(_Strict):
    """All of deid's settings. Build with :func:`load_settings`."""

    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    attack: Annotated[AttackConfig, Field(discriminator="name")] = Field(
        default_factory=default_attack
    )
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _pipeline_attacks_are_targeted(self) -> Settings:
        # The pipeline passes each face's *target* identity; an untargeted attack would read it
        # as the true class and count a face as protected whenever it is not classified as its
        # target, i.e. fail open.
        if not self.attack.targeted:
            raise ValueError(
                f"attack.targeted: the pipeline steers each face to a target identity, so "
                f"{self.attack.name!r} must run with targeted: true (untargeted attacks, vat "
                f"among them, are for the library and `deid eval`)"
            )
        return self


# Environment variables that name one setting directly (read as strings, not YAML).
ENV_ALIASES = {
    "DEID_BROKER_URL": ("service", "broker_url"),
    "DEID_STORAGE_ROOTS": ("service", "storage_roots"),
}

# A setting's place in the nested settings: ("attack", "eps").
Key = tuple[str, ...]


@dataclass(frozen=True)
class Layer:
    """One source of settings: nested values, and for each value (by its key) how to name
    where it came from in a message (``--eps``, ``DEID_ATTACK__EPS (attack.eps)``,
    ``my.yaml: attack.eps``).

    Attributes:
        data: sections of settings, e.g. ``{"attack": {"eps": 0.03}}``.
        names: key of each value in ``data`` -> where it came from.
    """

    data: dict[str, Any]
    names: dict[Key, str]

    @classmethod
    def of(cls, data: dict[str, Any], name: Callable[[Key], str]) -> Layer:
        """A layer whose values are named by ``name(key)``."""
        return cls(data, {k: name(k) for k in _leaves(data)})


def _leaves(data: dict[str, Any], prefix: Key = ()) -> Iterator[Key]:
    for k, v in data.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k)


def _dotted(key: Sequence[Any]) -> str:
    return ".".join(str(p) for p in key)


def env_layer(environ: Mapping[str, str] | None = None) -> Layer:
    """``DEID_<SECTION>__<FIELD>=value`` variables (values parsed as YAML), and the short
    forms of :data:`ENV_ALIASES`, each value named by its variable and setting
    (``DEID_ATTACK__EPS (attack.eps)``).

    Only the known sections are read: process-level variables such as ``DEID_DATA_DIR``
    are not settings and are left alone.
    """
    out: dict[str, Any] = {}
    names: dict[Key, str] = {}
    sections = set(Settings.model_fields)
    env = os.environ if environ is None else environ
    for var, field in ENV_ALIASES.items():  # short forms; DEID_SECTION__FIELD wins over them
        if env.get(var, "").strip():
            out.setdefault(field[0], {})[field[1]] = env[var].strip()
            names[field] = f"{var} ({_dotted(field)})"
    for var, value in env.items():
        if not var.startswith("DEID_") or "__" not in var:
            continue
        section, _, rest = var[5:].lower().partition("__")
        if section not in sections:
            continue
        node = out.setdefault(section, {})
        parts = rest.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else value
        names[(section, *parts)] = f"{var} ({_dotted((section, *parts))})"
    return Layer(out, names)


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings the environment sets, as a nested dict (see :func:`env_layer`)."""
    return env_layer(environ).data


def yaml_layer(path: Path, redact: bool = False) -> Layer:
    """A YAML settings file; each value named ``path: section.key``. A section left empty
    (``attack:`` with every key commented out) is no section. ``redact`` (the HTTP API): a
    message names the file (not its folder) and where a YAML error is, never its text.

    Raises:
        ConfigError: unreadable, not valid YAML, or not a mapping of sections at the top
            level.
    """
    shown = path.name if redact else str(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        if not redact:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{shown}: not valid YAML{at}") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read the config file ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: expected a mapping of sections at the top level")
    data = {k: v for k, v in data.items() if v is not None}
    return Layer.of(data, lambda key: f"{path}: {_dotted(key)}")


def _defaults_layer() -> Layer:
    """The default attack, with what it sets beyond its config's defaults (EOT on); its
    values are deid's own, named by their setting alone in messages."""
    attack = default_attack()
    return Layer({"attack": {"name": attack.name, **attack.model_dump(exclude_defaults=True)}}, {})


def merge_layers(layers: Sequence[Layer]) -> tuple[dict[str, Any], dict[Key, str]]:
    """Merge settings layers, lowest first, section by section and key by key.

    The ``attack`` section is the one exception: a layer whose ``attack.name`` differs from
    the name so far starts that section again (the new attack's defaults, then the layer's
    keys), since another attack's keys share names but not meanings (``steps`` of I-FGSM and
    of C&W, each attack's default ``target``). An ``attack`` section without ``name`` keeps
    the current attack.

    Returns:
        the merged sections, and the name of where each value came from.
    """
    merged: dict[str, Any] = {}
    names: dict[Key, str] = {}
    for layer in layers:
        attack = layer.data.get("attack")
        current = merged.get("attack")
        if (
            isinstance(attack, dict)
            and isinstance(current, dict)
            and "name" in attack
            and attack["name"] != current.get("name")
        ):
            merged.pop("attack")
            names = {k: v for k, v in names.items() if k[0] != "attack"}
        merged = deep_merge(merged, layer.data)
        names.update(layer.names)
    return merged, names


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``top``, nested dicts merged key by key (neither is modified)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def resolve_config_path(path: Path | str | None) -> Path | None:
    """A config path as given, or a name in ``configs/`` (``celeba-cnn``: its YAML file)."""
    if path is None:
        default = CONFIG_DIR / "default.yaml"
        return default if default.is_file() else None
    p = Path(path)
    if p.is_file():
        return p
    named = CONFIG_DIR / f"{path}.yaml"
    if named.is_file():
        return named
    available = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(f"config file not found: {path} (give a YAML path or one of {available})")


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field holds: one, or the members of a (discriminated) union."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def _setting(loc: Sequence[Any]) -> tuple[Key, type[BaseModel] | None, str | None]:
    """The setting a pydantic error location points at, without the tags pydantic puts in
    for a union (``attack.ifgsm.eps`` -> ``attack.eps``); the model holding its last part
    (None below a plain value) and that model's union tag (``ifgsm``; None outside a union)."""
    parts = [p for p in loc if not str(p).startswith("function-")]
    key: list[str] = []
    model: type[BaseModel] | None = Settings
    tag: str | None = None
    parent: tuple[type[BaseModel] | None, str | None] = (None, None)
    i = 0
    while i < len(parts):
        key.append(str(parts[i]))
        parent = (model, tag)
        field = model.model_fields.get(str(parts[i])) if model is not None else None
        members = _models(field.annotation) if field is not None else []
        model, tag = (members[0] if len(members) == 1 else None), None
        if len(members) > 1 and i + 1 < len(parts):  # a union: the next part is its tag
            tagged = [m for m in members if m.model_fields["name"].default == parts[i + 1]]
            if tagged:
                model, tag = tagged[0], str(parts[i + 1])
                i += 1
        i += 1
    return tuple(key), parent[0], parent[1]


def _origin(key: Key, names: Mapping[Key, str]) -> str | None:
    """Where the value at ``key`` (or the value holding it) came from."""
    for n in range(len(key), 0, -1):
        if key[:n] in names:
            return names[key[:n]]
    return None


def _unknown_key(key: Key, model: type[BaseModel] | None, tag: str | None) -> str:
    expected = sorted(model.model_fields) if model is not None else []
    what = f"unknown key for {key[-2]} {tag!r}" if tag and len(key) > 1 else "unknown key"
    close = difflib.get_close_matches(key[-1], expected, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{what}; expected one of {expected}{hint}"


def format_validation_error(
    err: ValidationError, names: Mapping[Key, str] | None = None, redact: bool = False
) -> str:
    """One line per bad setting, naming where its value came from (``names``, see
    :class:`Layer`): ``--eps: Input should be less than or equal to 1 (got 2.0)``,
    ``my.yaml: attack.epz: unknown key for attack 'ifgsm'; expected one of [...]``.

    ``redact`` (the HTTP API): the setting and the rule, never the value (neither the
    ``(got ...)`` nor a value pydantic or a validator put into the message) nor the file it
    came from, lines capped. A user who sent the value knows it; a file's contents stay on
    the server.
    """
    names = names or {}
    lines = []
    for e in err.errors():
        key, model, tag = _setting(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_key(key, model, tag)
        got = e.get("input")
        if redact:
            if isinstance(got, str) and got and e["type"] != "extra_forbidden":
                msg = redact_value(msg, got)
            lines.append(_cap(f"{_cap(_dotted(key), 200)}: {msg}", 300))
            if len(lines) == 20:
                lines.append(f"... ({len(err.errors()) - 20} more)")
                break
            continue
        # deid's own rules (value_error) say what they got in their own words
        plain = isinstance(got, dict) or e["type"] in ("extra_forbidden", "value_error")
        shown = "" if plain else f" (got {got!r})"
        where = _origin(key, names)
        if where is None and key:
            # a rule over several keys (a section's validator): name where each came from
            under = sorted({v for k, v in names.items() if k[: len(key)] == key})
            where = _dotted(key)
            msg += f" (set by {', '.join(under)})" if under else ""
        lines.append(f"{where}: {msg}{shown}" if where else f"{msg}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def redact_value(msg: str, value: str) -> str:
    """``msg`` with ``value`` (quoted as ``repr`` does, or bare if it is long enough not to be
    an ordinary word of the message) replaced by ``<value>``."""
    msg = msg.replace(repr(value), "<value>")
    return msg.replace(value, "<value>") if len(value) >= 8 else msg


def _cap(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def load_settings(
    path: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
    redact: bool = False,
) -> Settings:
    """Load deid's settings from its layers, each over the one before:

    deid's defaults < ``configs/default.yaml`` < the YAML file ``path`` (a path, or a name in
    ``configs/``) < the ``DEID_...`` environment < ``overrides`` (a nested dict, e.g. CLI
    flags: ``{"attack": {"eps": 8/255}}``).

    Sections merge key by key, so a file or variable need only give what it changes
    (``attack: {eps: 8/255}`` keeps the current attack and its other keys, EOT included). A
    layer that names another attack starts the attack section again from that attack's
    defaults (see :func:`merge_layers`).

    Args:
        flags: how each override was given, by dotted setting (``{"attack.eps": "--eps"}``),
            to name it in messages; other overrides are named by their setting.
        redact: (the HTTP API) messages name settings and rules, never values, files or
            lines of a file (see :func:`format_validation_error`).

    Raises:
        ConfigError: unknown keys, values out of range, or a missing file, with a message
            naming each setting, where its value came from (flag, variable, file) and what
            it accepts.
    """
    flags = flags or {}
    files = [resolve_config_path(None), resolve_config_path(path) if path is not None else None]
    files = list({p.resolve(): p for p in files if p is not None}.values())  # default.yaml once
    layers = [_defaults_layer(), *(yaml_layer(p, redact) for p in files), env_layer()]
    layers.append(Layer.of(overrides or {}, lambda key: flags.get(_dotted(key), _dotted(key))))
    merged, names = merge_layers(layers)
    attack = merged.get("attack")
    name = attack.get("name") if isinstance(attack, dict) else None
    if isinstance(attack, dict) and not (isinstance(name, str) and name in ATTACKS):
        where = "attack.name" if redact else names.get(("attack", "name"), "attack.name")
        what = "unknown attack" if redact else f"unknown attack {name!r}"
        raise ConfigError(
            f"invalid configuration:\n  {where}: {what}; available: {sorted(ATTACKS)}"
        )
    try:
        return Settings.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, names, redact)) from None


# The built-in generators (``attack.name: replace``) register themselves on import; importing
# them here makes their names valid in every settings file.
import deid.generators.builtin  # noqa: E402,F401
