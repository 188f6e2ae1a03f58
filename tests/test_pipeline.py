"""Pipeline stages alone, and end-to-end runs on real footage and photos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from deid.config import load_settings
from deid.errors import OutputError
from deid.io import check_run, read_image, read_image_pages, write_image
from deid.pipeline import (
    Resources,
    TargetMemory,
    Timer,
    new_state,
    process_frames,
    report_path,
    run,
)
from deid.types import FaceCrop

from .conftest import SCENES, scene, tiny_classifier


def _settings(**attack):
    return load_settings(
        overrides={"pipeline": {"device": "cpu"}, "attack": attack}
        if attack
        else {"pipeline": {"device": "cpu"}}
    )


@pytest.fixture(scope="module")
def resources() -> Resources:
    return Resources.load(_settings())


def test_frame_without_faces_passes_through(resources: Resources) -> None:
    frame = np.full((120, 160, 3), 90, np.uint8)
    state = new_state(resources.settings)
    out, records = process_frames([frame, frame], resources, state, Timer())
    assert records == [] and all(np.array_equal(o, frame) for o in out)
    assert state.frame_offset == 2


def test_target_memory_keeps_a_faces_target() -> None:
    mem = TargetMemory(iou=0.3)

    def crop_at(x: float) -> FaceCrop:
        return FaceCrop(
            0,
            0,
            (0, 0, 1, 1),
            np.zeros((1, 1, 3), np.uint8),
            np.zeros((2, 3), np.float32),
            np.array([x, 10, x + 40, 50], np.float32),
        )

    a = [crop_at(10), crop_at(200)]
    t1 = mem.assign(a, torch.tensor([5, 6]), torch.tensor([0, 1]))
    b = [crop_at(14), crop_at(400)]  # the first face moved a little, a new face appeared
    t2 = mem.assign(b, torch.tensor([7, 8]), torch.tensor([0, 2]))
    assert int(t2[0]) == int(t1[0]) and b[0].track == a[0].track
    assert int(t2[1]) == 8 and b[1].track not in (a[0].track, a[1].track)


def test_group_photo_end_to_end(tmp_path: Path) -> None:
    photo = SCENES / "group_friends_stoop.jpg"
    if not photo.is_file():
        pytest.skip("shared scenes not found")
    out = tmp_path / "group.png"
    report = run(photo, out, _settings(), progress=False, contact_sheet=tmp_path / "sheet.png")
    img, res = read_image(photo), read_image(out)
    assert res.shape == img.shape
    t = report["totals"]
    assert t["faces"] >= 5
    # every face is either de-identified on the written file or obscured
    for f in report["faces_detail"]:
        assert f["action"] != "attacked" or not f["verified"]["is_original"], f
    assert t["unprotected_faces"] == 0
    assert t["attack_success_rate"] >= 0.8
    # the faces changed, the rest of the picture did not
    diff = np.abs(res.astype(int) - img).sum(2) > 0
    assert 0 < diff.mean() < 0.2
    assert report_path(out).is_file() and (tmp_path / "sheet.png").stat().st_size > 10_000
    saved = json.loads(report_path(out).read_text())
    assert saved["totals"] == t and "_theta" not in saved["faces_detail"][0]
    for k in ("detect", "attack", "verify"):
        assert k in saved["seconds"]


def test_a_photos_pixel_format_is_kept(tmp_path: Path) -> None:
    """A 16-bit greyscale photo (a thermal camera's, say) comes out 16-bit greyscale, every
    pixel outside the protected faces at its full depth; an RGBA photo keeps its alpha."""
    img = cv2.resize(scene("couple_two_faces.jpg"), (480, 320), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.int64)
    deep = np.minimum(grey * 257 + rng.integers(0, 257, grey.shape), 65535).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "thermal.png")
    report = run(tmp_path / "thermal.png", tmp_path / "out.png", _settings(), progress=False)
    t = report["totals"]
    assert t["faces"] >= 1 and t["unprotected_faces"] == 0
    back = Image.open(tmp_path / "out.png")
    assert back.mode == "I;16"
    outside = np.ones(deep.shape, bool)
    for f in report["faces_detail"]:
        x1, y1, x2, y2 = f["region"]
        outside[y1:y2, x1:x2] = False
    assert outside.mean() > 0.2  # the crop regions of a close-up cover most of it
    np.testing.assert_array_equal(np.asarray(back)[outside], deep[outside])
    assert (np.asarray(back)[~outside] != deep[~outside]).any()  # the faces did change

    alpha = np.linspace(0, 255, img.shape[1]).astype(np.uint8)[None, :].repeat(img.shape[0], 0)
    Image.fromarray(np.dstack([img, alpha])).save(tmp_path / "cutout.png")
    report = run(tmp_path / "cutout.png", tmp_path / "out2.png", _settings(), progress=False)
    assert report["totals"]["faces"] >= 1 and report["totals"]["unprotected_faces"] == 0
    back = Image.open(tmp_path / "out2.png")
    assert back.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(back)[:, :, 3], alpha)


@pytest.mark.parametrize("suffix", [".tif", ".webp"])
def test_every_frame_of_a_multi_frame_image_is_protected(tmp_path: Path, suffix: str) -> None:
    """A multi-page TIFF (a multispectral camera's bands) or an animated WebP comes out
    with every frame, each frame's faces protected, the pixels away from them as they
    were, and the animation's timing; written as a JPEG it is refused up front."""
    a = cv2.resize(scene("couple_two_faces.jpg"), (480, 320), interpolation=cv2.INTER_AREA)
    b = cv2.resize(scene("group_friends_stoop.jpg"), (480, 252), interpolation=cv2.INTER_AREA)
    if suffix == ".webp":  # an animation's frames share one size
        b = cv2.resize(b, (480, 320), interpolation=cv2.INTER_AREA)
    src, out = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    first, second = Image.fromarray(a), Image.fromarray(b).convert("L")  # a grey page too
    extra = {"duration": [300, 700], "loop": 0, "lossless": True} if suffix == ".webp" else {}
    first.save(src, save_all=True, append_images=[second], **extra)
    report = run(src, out, _settings(), progress=False)
    t = report["totals"]
    assert t["frames"] == 2 and t["unprotected_faces"] == 0
    assert {f["frame"] for f in report["faces_detail"]} == {0, 1}
    assert all(f["page"] == f["frame"] for f in report["faces_detail"])  # the file's frame
    frames, pages = read_image_pages(out)
    assert len(frames) == 2 and frames[1].shape == (*np.asarray(second).shape, 3)
    for i, (orig, back) in enumerate(zip(read_image_pages(src)[0], frames, strict=True)):
        outside = np.ones(back.shape[:2], bool)
        for f in report["faces_detail"]:
            if f["frame"] == i:
                x1, y1, x2, y2 = f["region"]
                outside[y1:y2, x1:x2] = False
        diff = np.abs(back.astype(int) - orig)
        assert diff[~outside].mean() > 2 * diff[outside].mean() + 0.5  # the faces changed
        if suffix == ".tif":  # lossless: the rest as it was
            np.testing.assert_array_equal(back[outside], orig[outside])
        else:  # WebP at deid's quality 95: lossy
            assert diff[outside].mean() < 2
    if suffix == ".webp":
        assert pages.durations == [300, 700] and pages.loop == 0
    else:
        assert [p.grey for p in pages.formats] == [False, True]
    with pytest.raises(OutputError, match="holds 2 frames"):
        check_run(src, tmp_path / "out.jpg")


def test_failed_attacks_fail_closed(tmp_path: Path) -> None:
    face = scene("astronaut_single_face.png")
    src = tmp_path / "astro.png"
    write_image(src, face)
    out = tmp_path / "out.png"
    # one step of 1/255 cannot reach the least-likely identity
    report = run(src, out, _settings(eps=1 / 255, alpha=1 / 255, steps=1), progress=False)
    t = report["totals"]
    assert t["faces"] == 1 and t["fail_closed"] == 1 and t["attack_succeeded"] == 0
    f = report["faces_detail"][0]
    assert f["action"] == "obscured:pixelate" and not f["success"]
    x1, y1, x2, y2 = f["region"]
    before = face[y1:y2, x1:x2].astype(int)
    after = read_image(out)[y1:y2, x1:x2].astype(int)
    # pixelated: the face's fine detail is gone
    assert np.abs(np.diff(after, axis=1)).mean() < 0.5 * np.abs(np.diff(before, axis=1)).mean()


def test_tiny_classifier_checkpoint_through_the_pipeline(tmp_path: Path) -> None:
    """Any checkpoint path works, and its crop convention drives the crops."""
    ckpt = tmp_path / "tiny.pt"
    tiny_classifier().save(ckpt)
    src = tmp_path / "astro.png"
    write_image(src, scene("astronaut_single_face.png"))
    s = load_settings(overrides={"pipeline": {"device": "cpu"}, "classifier": {"name": str(ckpt)}})
    report = run(src, tmp_path / "out.jpg", s, progress=False)
    assert report["totals"]["faces"] == 1
    assert report["faces_detail"][0]["pred"].startswith("id")


def test_redetection_around_known_faces_matches_full_frames(resources: Resources) -> None:
    from deid.pipeline import detect, detect_around

    frame = scene("group_friends_stoop.jpg")
    full = detect(resources.detector, [frame])[0]
    records = [
        {"region": [int(b[0]) - 10, int(b[1]) - 10, int(b[2]) + 10, int(b[3]) + 10]}
        for b in full.boxes
    ]
    around = detect_around(resources.detector, [frame], {0: records})[0]
    assert len(around) == len(full)
    a = full.boxes[np.argsort(full.boxes[:, 0])]
    b = around.boxes[np.argsort(around.boxes[:, 0])]
    assert np.abs(a - b).max() < 8


@pytest.mark.parametrize("mode", ["around", "full", "none"])
def test_verification_redetects_unless_told_not_to(tmp_path: Path, mode: str) -> None:
    """``pipeline.verify_detect``: around and full read each written face twice (the crop it
    was protected at, and a fresh re-detection); none reads the crop alone, and says so."""
    src = tmp_path / "astro.png"
    write_image(src, scene("astronaut_single_face.png"))
    s = load_settings(
        overrides={"pipeline": {"device": "cpu", "verify_detect": mode, "judge": "off"}}
    )
    report = run(src, tmp_path / "out.png", s, progress=False)
    (f,) = report["faces_detail"]
    v = f["verified"]
    assert f["action"] == "attacked" and v["same_crop"] == f["final"]
    if mode == "none":
        assert v["redetect"] is False and v["redetected"] is None
    else:
        # the astronaut's face is large and clear: the detector finds it again
        assert v["redetect"] is True and v["redetected"] is not None
    assert v["is_target"] == (
        v["same_crop"] == f["target"] and v["redetected"] in (None, f["target"])
    )
    assert report["settings"]["pipeline"]["verify_detect"] == mode
