"""Configuration: pydantic models, YAML files in ``configs/``, ``DEID_...`` environment on top.

Priority (first wins): explicit overrides (CLI flags) > environment > YAML > defaults.
Nested fields use ``__`` in the environment: ``DEID_ATTACK__EPS=0.03``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

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

from deid.attacks.registry import AttackConfig, default_attack
from deid.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DetectorConfig(_Strict):
    """MTCNN settings. Drone faces are small: the default looks for faces from 20 px."""

    min_face_size: int = Field(20, ge=8, le=1000)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    min_score: float = Field(0.9, ge=0.0, le=1.0)
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

    @field_validator("thresholds")
    @classmethod
    def _in_unit(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0.0 < t < 1.0 for t in v):
            raise ValueError(f"each threshold must be in (0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> DetectorConfig:
        if self.tile is not None and self.tile_overlap >= self.tile:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be smaller than tile ({self.tile})"
            )
        return self


class ClassifierConfig(_Strict):
    """Which identity classifier: a shipped name (``yaleb-mlp``, ``celeba-cnn``) or a path."""

    name: str = "celeba-cnn"


class PipelineConfig(_Strict):
    """How frames flow through the stages."""

    fallback: Literal["pixelate", "blur", "black"] = "pixelate"
    verify: bool = Field(True, description="re-read the output and re-classify its faces")
    repair: bool = Field(True, description="obscure faces still recognised in the written output")
    verify_detect: Literal["around", "full"] = Field(
        "around",
        description="re-detect around each processed face (fast) or on whole frames (also "
        "counts faces the first pass missed)",
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
    threads: int | None = Field(
        None, ge=1, le=256, description="torch CPU threads (None: torch default)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be one of 'auto', 'cpu', 'cuda', 'cuda:N'; got {v!r}")


class TrackingConfig(_Strict):
    """How faces are linked across video frames (see :mod:`deid.tracking`)."""

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


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``DEID_<SECTION>__<FIELD>=value`` variables as a nested dict (values parsed as YAML).

    Only the known sections are read: process-level variables such as ``DEID_DATA_DIR``
    are not settings and are left alone.
    """
    out: dict[str, Any] = {}
    sections = set(Settings.model_fields)
    env = os.environ if environ is None else environ
    for key, field in ENV_ALIASES.items():  # short forms; DEID_SECTION__FIELD wins over them
        if env.get(key, "").strip():
            out.setdefault(field[0], {})[field[1]] = env[key].strip()
    for key, value in env.items():
        if not key.startswith("DEID_") or "__" not in key:
            continue
        section, _, rest = key[5:].lower().partition("__")
        if section not in sections:
            continue
        node = out.setdefault(section, {})
        parts = rest.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else value
    return out


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


def format_validation_error(err: ValidationError) -> str:
    """One line per bad field: ``attack.eps: Input should be greater than 0 (got -1)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{loc}: {e['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(
    path: Path | str | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Load settings from YAML (default ``configs/default.yaml``), the environment and overrides.

    ``overrides`` is a nested dict (e.g. ``{"attack": {"name": "realistic"}}``); when it
    changes the attack's ``name``, the YAML's parameters of the other attack are dropped.

    Raises:
        ConfigError: unknown keys, values out of range, or a missing file, with a message
            naming each field and what it accepts.
    """
    yaml_path = resolve_config_path(path)
    overrides = overrides or {}
    try:
        yaml_data = (yaml.safe_load(yaml_path.read_text()) or {}) if yaml_path else {}
        if not isinstance(yaml_data, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping of sections at the top level")
        merged = deep_merge(yaml_data, env_overrides())
        new_attack = overrides.get("attack", {}).get("name")
        if new_attack and merged.get("attack", {}).get("name", new_attack) != new_attack:
            merged["attack"] = {}
        merged = deep_merge(merged, overrides)
        return Settings.model_validate(merged)
    except ValidationError as e:
        where = f" (from {yaml_path})" if yaml_path else ""
        raise ConfigError(format_validation_error(e) + where) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{yaml_path}: not valid YAML ({e})") from None
