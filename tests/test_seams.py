"""The seams: a detector, an attack and a generator are each one class and one registry line,
and the pipeline treats what they make like its own (verification, fail closed, tracking)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from deid.attacks.base import AttackConfigBase, AttackResult, perturbation_norms
from deid.attacks.registry import register, unregister
from deid.cli import main
from deid.config import load_settings
from deid.detect import DETECTORS, build_detector, register_detector
from deid.io import read_frames, read_image, write_image
from deid.pipeline import (
    GENERATORS,
    Resources,
    StepFailed,
    register_generator,
    run,
    unregister_generator,
)
from deid.targets import TargetMode

from .conftest import SCENES, scene


# --------------------------------------------------------------------------------------------
# the three extensions, each in a few lines
# --------------------------------------------------------------------------------------------
class Flat:
    """A generator: every face becomes its mean colour (so no one recognises it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...], list[int]]] = []

    def generate(self, crops: Tensor, landmarks: Tensor, track_ids: Tensor) -> Tensor:
        self.calls.append((tuple(crops.shape), tuple(landmarks.shape), track_ids.tolist()))
        return crops.mean((2, 3), keepdim=True).expand_as(crops).clone()


class Same:
    """A generator that changes nothing (each face still itself: must be obscured)."""

    def generate(self, crops: Tensor, landmarks: Tensor, track_ids: Tensor) -> Tensor:
        return crops.clone()


class Inner:
    """A generator that replaces the inner face (the landmarks' box, grown) by flat grey and
    keeps the rest of the crop, as face replacement does."""

    def generate(self, crops: Tensor, landmarks: Tensor, track_ids: Tensor) -> Tensor:
        out = crops.clone()
        for k, lm in enumerate(landmarks):
            (x1, y1), (x2, y2) = lm.amin(0).tolist(), lm.amax(0).tolist()
            gx, gy = 0.6 * (x2 - x1), 0.6 * (y2 - y1)
            ys, xs = (
                slice(max(0, int(y1 - gy)), int(y2 + gy) + 1),
                slice(max(0, int(x1 - gx)), int(x2 + gx) + 1),
            )
            out[k, :, ys, xs] = 0.5
        return out


class NothingConfig(AttackConfigBase):
    name: Literal["nothing"] = "nothing"
    default_target: ClassVar[TargetMode] = "least-likely"


class Nothing:
    """An attack that gives up at once (every face fails: fail closed)."""

    def __init__(self, cfg: NothingConfig) -> None:
        self.cfg = cfg

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        with torch.no_grad():
            logits = model(images)
        n = len(images)
        norms = perturbation_norms(images, images)
        return AttackResult(
            images.clone(), logits.argmax(1) == targets, torch.zeros(n), logits, norms
        )


@pytest.fixture
def generators() -> Iterator[dict[str, object]]:
    made: dict[str, object] = {}

    def keep(name: str, gen: object) -> object:
        made[name] = gen
        return gen

    register_generator("flat", lambda cfg: keep("flat", Flat()))
    register_generator("same", lambda cfg: keep("same", Same()))
    register_generator("inner", lambda cfg: keep("inner", Inner()))
    try:
        yield made
    finally:
        unregister_generator("flat")
        unregister_generator("same")
        unregister_generator("inner")
    assert "flat" not in GENERATORS


def _settings(name: str, **pipeline: object):  # type: ignore[no-untyped-def]
    return load_settings(
        overrides={
            "pipeline": {"device": "cpu", **pipeline},
            "classifier": {"name": "yaleb-mlp"},
            "attack": {"name": name},
        }
    )


# --------------------------------------------------------------------------------------------
# generators
# --------------------------------------------------------------------------------------------
def test_a_generator_runs_the_pipeline_end_to_end(
    generators: dict[str, object], tmp_path: Path
) -> None:
    """Registered in one line, named like an attack; its faces are verified on the written
    file, and a face it leaves recognisable is obscured (fail closed)."""
    photo = SCENES / "group_friends_stoop.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} not found (set DEID_DATA_DIR)")
    src = tmp_path / "group.jpg"
    src.write_bytes(photo.read_bytes())
    before = read_image(src)

    report = run(src, tmp_path / "flat.png", _settings("flat"), progress=False)
    assert report["attack"]["name"] == "flat" and report["settings"]["attack"]["name"] == "flat"
    faces = report["faces_detail"]
    assert len(faces) >= 5
    calls = generators["flat"].calls  # type: ignore[attr-defined]
    assert sum(len(ids) for _, _, ids in calls) == len(faces)
    assert all(crops[1] == 3 and lms[1:] == (5, 2) for crops, lms, _ in calls)
    after = read_image(tmp_path / "flat.png")
    for f in faces:
        assert "verified" in f  # checked on the written file, as an attack's faces are
        ok = ("attacked", "repaired:pixelate")  # repaired: recognised in the written file
        assert f["action"] in (ok if f["success"] else ("obscured:pixelate",))
        assert f["action"] != "attacked" or not f["verified"]["is_original"]
        x1, y1, x2, y2 = f["region"]
        assert np.abs(after[y1:y2, x1:x2].astype(int) - before[y1:y2, x1:x2]).mean() > 2
    assert report["totals"]["unprotected_faces"] == 0

    same = run(src, tmp_path / "same.png", _settings("same"), progress=False)
    assert same["attack"]["name"] == "same"
    assert len(same["faces_detail"]) == len(faces)
    assert all(f["action"] == "obscured:pixelate" for f in same["faces_detail"])
    assert same["totals"]["fail_closed"] == len(faces)


@pytest.mark.parametrize("photo", ["group_selfie_elevator.jpg", "crowd_stadium_fans.jpg"])
def test_a_neighbour_s_crop_never_writes_a_face_back(
    generators: dict[str, object], tmp_path: Path, photo: str
) -> None:
    """People side by side have overlapping crops (a crop is the classifier's square, larger
    than the face). Each face's inner part is replaced and the rest of its crop kept; pasted
    whole, one after another, a later crop wrote its copy of an earlier neighbour's original
    face back over that face's replacement (or its pixelation). Every face's centre in the
    written image must be new."""
    src = SCENES / photo
    if not src.is_file():
        pytest.skip(f"{src} not found (set DEID_DATA_DIR)")
    before = read_image(src)
    # the CelebA CNN's crops (its template has context around the face: larger crops)
    settings = load_settings(
        overrides={"pipeline": {"device": "cpu", "verify": False}, "attack": {"name": "inner"}}
    )
    report = run(src, tmp_path / "out.png", settings, progress=False)
    after = read_image(tmp_path / "out.png")
    faces = report["faces_detail"]
    assert len(faces) >= 4
    for f in faces:
        x1, y1, x2, y2 = f["box"]
        cx, cy, hx, hy = (x1 + x2) / 2, (y1 + y2) / 2, 0.2 * (x2 - x1), 0.2 * (y2 - y1)
        ys = slice(max(0, round(cy - hy)), round(cy + hy) + 1)
        xs = slice(max(0, round(cx - hx)), round(cx + hx) + 1)
        kept = (after[ys, xs] == before[ys, xs]).all(2).mean()
        assert kept < 0.02, (f["box"], f["action"], kept)


def test_a_generator_is_chosen_by_attack_and_keeps_a_track_across_a_video(
    generators: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`deid run --attack flat` picks the generator; in a video it gets every face with its
    track id (one person, one id in every frame and chunk)."""
    from .test_video_job import face_frames, write_clip

    src = write_clip(tmp_path / "in.mp4", face_frames(), audio=False)
    out = tmp_path / "out.mp4"
    argv = ["run", str(src), "-o", str(out), "--attack", "flat", "--classifier", "yaleb-mlp"]
    monkeypatch.setenv("DEID_PIPELINE__CHUNK_FRAMES", "7")
    assert main([*argv, "--device", "cpu", "--quiet"]) == 0
    report = json.loads(out.with_name("out.report.json").read_text())
    assert report["attack"]["name"] == "flat" and report["video"]["chunks"] == 2
    ids = [t for _, _, ts in generators["flat"].calls for t in ts]  # type: ignore[attr-defined]
    assert len(ids) >= 14 and set(ids) == {0}
    assert report["totals"]["tracks"] == 1 and report["totals"]["unprotected_faces"] == 0
    assert all("verified" in f for f in report["faces_detail"])
    assert len(list(read_frames(out))) == 14


def test_generator_names_are_checked(generators: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_generator("ifgsm", lambda cfg: Same())
    with pytest.raises(ValueError, match="already registered"):
        register_generator("flat", lambda cfg: Same())
    s = load_settings(overrides={"attack": {"name": "flat", "then": "ifgsm"}})
    assert s.attack.then == "ifgsm"  # type: ignore[union-attr]
    from deid.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown attack 'flat'"):
        load_settings(overrides={"attack": {"name": "flat", "then": "flat"}})


# --------------------------------------------------------------------------------------------
# a detector and an attack
# --------------------------------------------------------------------------------------------
def test_a_detector_and_an_attack_are_one_line_each(tmp_path: Path) -> None:
    """A detector that sees the astronaut where MTCNN does, and an attack that does nothing:
    both run the pipeline, and the face the attack cannot change is obscured."""
    img = cv2.resize(scene("astronaut_single_face.png"), (256, 256), interpolation=cv2.INTER_AREA)
    seen = build_detector(load_settings().detector).detect([img])[0]
    register_detector("seen", lambda cfg, device: _Fixed(seen))
    register(Nothing, NothingConfig)
    try:
        s = load_settings(
            overrides={
                "pipeline": {"device": "cpu"},
                "classifier": {"name": "yaleb-mlp"},
                "detector": {"name": "seen"},
                "attack": {"name": "nothing"},
            }
        )
        res = Resources.load(s)
        assert isinstance(res.detector, _Fixed) and res.protector.name == "nothing"
        src = tmp_path / "a.png"
        write_image(src, img)
        report = run(src, tmp_path / "out.png", s, progress=False, resources=res)
    finally:
        del DETECTORS["seen"]
        unregister("nothing")
    assert report["attack"]["name"] == "nothing"
    assert [f["action"] for f in report["faces_detail"]] == ["obscured:pixelate"]
    assert report["faces_detail"][0]["box"] == [round(float(v), 1) for v in seen.boxes[0]]


class _Fixed:
    """A detector that reports the same faces in every frame (and around them)."""

    def __init__(self, dets: object) -> None:
        self.dets = dets

    def detect(self, frames, edge_pad=None):  # type: ignore[no-untyped-def]
        return (
            [self.dets for _ in frames] if edge_pad is None else [self.dets.empty()] * len(frames)
        )

    def too_small(self, shape):  # type: ignore[no-untyped-def]
        return False


# --------------------------------------------------------------------------------------------
# a failure names its step
# --------------------------------------------------------------------------------------------
class Broken:
    def generate(self, crops: Tensor, landmarks: Tensor, track_ids: Tensor) -> Tensor:
        raise RuntimeError("out of ideas")


def test_a_failed_step_is_named_and_leaves_nothing(tmp_path: Path) -> None:
    register_generator("broken", lambda cfg: Broken())
    try:
        src = tmp_path / "a.png"
        write_image(src, scene("astronaut_single_face.png"))
        with pytest.raises(StepFailed, match=r"step 'protect' failed: RuntimeError: out of ideas"):
            run(src, tmp_path / "out.png", _settings("broken"), progress=False)
    finally:
        unregister_generator("broken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_generator_followed_by_an_attack(generators: dict[str, object], tmp_path: Path) -> None:
    """``then``: the attack runs on the generated face; PSNR is against the original face."""
    src = tmp_path / "a.png"
    write_image(src, scene("astronaut_single_face.png"))
    s = load_settings(
        overrides={
            "pipeline": {"device": "cpu"},
            "classifier": {"name": "yaleb-mlp"},
            "attack": {"name": "flat", "then": "ifgsm"},
        }
    )
    report = run(src, tmp_path / "out.png", s, progress=False)
    (face,) = report["faces_detail"]
    assert report["attack"]["then"] == "ifgsm" and face["steps"] >= 1
    ok = ("attacked", "repaired:pixelate") if face["success"] else ("obscured:pixelate",)
    assert face["action"] in ok
    assert face["psnr"] is not None and face["psnr"] < 30  # the flat face is far from the original
