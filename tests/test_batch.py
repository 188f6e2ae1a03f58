"""deid batch: a tree of real images (and a clip), resumable, with a manifest CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from deid.batch import FIELDS, MANIFEST, process_file, run_batch
from deid.cli import main
from deid.config import load_settings
from deid.io import probe_video, read_frames, read_image, write_video
from deid.pipeline import Resources
from tests.conftest import SCENES, scene

# The batch's bookkeeping does not depend on the classifier: the small Yale B MLP keeps the
# attacks (and so the test) quick.
FAST = {"classifier": {"name": "yaleb-mlp"}, "pipeline": {"device": "cpu"}}
GOOD = ["a.jpg", "sub/b.png", "sub/deeper/c.jpg", "sub/clip.mp4"]
BAD = ["broken.jpg", "sub/text.jpg", "sub/cut.mp4", "sub/clip.avi"]


def _small(name: str, side: int) -> Image.Image:
    img = Image.fromarray(scene(name))
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return img


def make_tree(root: Path, video: bool = True) -> Path:
    """Real photos (downscaled), a corrupt JPEG, a text file named .jpg, ignored extras."""
    (root / "sub" / "deeper").mkdir(parents=True)
    _small("group_selfie_elevator.jpg", 320).save(root / "a.jpg", quality=92)
    _small("astronaut_single_face.png", 200).save(root / "sub" / "b.png")
    _small("couple_two_faces.jpg", 360).save(root / "sub" / "deeper" / "c.jpg", quality=92)
    good = (root / "a.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(good[: len(good) // 3])  # truncated
    (root / "sub" / "text.jpg").write_text("this is not an image\n")
    (root / "notes.txt").write_text("not media: ignored\n")
    (root / ".hidden.jpg").write_bytes(good)  # hidden: ignored
    if video:
        clip = SCENES / "pedestrians_walking_1080p.mp4"
        if not clip.is_file():
            pytest.skip(f"{clip} not found")
        frames = []
        for f in read_frames(clip):
            frames.append(cv2.resize(f, (640, 360), interpolation=cv2.INTER_AREA))
            if len(frames) == 3:
                break
        write_video(root / "sub" / "clip.mp4", frames, 25)
        data = (root / "sub" / "clip.mp4").read_bytes()
        (root / "sub" / "cut.mp4").write_bytes(data[: len(data) // 3])  # truncated video
        (root / "sub" / "clip.avi").write_bytes(data)  # its output would be clip.mp4 too
    return root


@pytest.fixture(scope="module")
def res(data_dir: Path) -> Resources:
    return Resources.load(load_settings(None, FAST))


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with (out / MANIFEST).open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == FIELDS
        return {r["path"]: r for r in reader}


def mtimes(out: Path) -> dict[str, int]:
    return {p: (out / p).stat().st_mtime_ns for p in GOOD}


def test_batch_tree_manifest_and_resume(tmp_path: Path, res: Resources) -> None:
    src = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    s = run_batch(src, out, res, progress=False)
    assert (s["files"], s["done"], s["failed"], s["skipped"]) == (8, 4, 4, 0)
    rows = manifest(out)
    assert sorted(rows) == sorted(GOOD + BAD)
    for p in GOOD:
        r = rows[p]
        assert r["status"] == "done", r
        assert r["error"] == ""
        assert int(r["faces"]) == int(r["deidentified"]) + int(r["obscured"])
        assert len(r["input_sha256"]) == 64 and int(r["input_size"]) > 0
        assert float(r["seconds"]) > 0
    # every photo has at least one face, and the tree is mirrored with sizes kept
    for p in ["a.jpg", "sub/b.png", "sub/deeper/c.jpg"]:
        assert int(rows[p]["faces"]) >= 1, p
        assert read_image(out / p).shape == read_image(src / p).shape
    info_in, info_out = probe_video(src / "sub/clip.mp4"), probe_video(out / "sub/clip.mp4")
    assert info_out.frame_count == info_in.frame_count == int(rows["sub/clip.mp4"]["frames"])
    assert (out / "sub" / "clip.report.json").is_file()
    # failures are rows with the reason; nothing is written for them
    assert rows["broken.jpg"]["status"] == "failed"
    assert "not a readable image" in rows["broken.jpg"]["error"]
    assert rows["sub/text.jpg"]["status"] == "failed"
    assert "not a readable image" in rows["sub/text.jpg"]["error"]
    assert "cannot decode" in rows["sub/cut.mp4"]["error"]
    assert "already written for sub/clip.mp4" in rows["sub/clip.avi"]["error"]
    assert not (out / "broken.jpg").exists() and not (out / "sub/text.jpg").exists()
    assert not (out / "sub/cut.mp4").exists()
    assert sorted(p for p, _ in s["failures"]) == sorted(BAD)
    # ignored files, and no temporary files left behind
    assert not (out / "notes.txt").exists() and not (out / ".hidden.jpg").exists()
    assert not [p for p in out.rglob(".*")]

    # rerun: done files are verified and skipped, not rewritten; failures are retried
    before = mtimes(out)
    s2 = run_batch(src, out, res, progress=False)
    assert (s2["done"], s2["skipped"], s2["failed"]) == (0, 4, 4)
    rows2 = manifest(out)
    assert all(rows2[p]["status"] == "skipped" for p in GOOD)
    assert all(rows2[p]["faces"] == rows[p]["faces"] for p in GOOD)
    assert mtimes(out) == before

    # a deleted output, a damaged output and a changed input are redone; the rest skipped
    (out / "sub/b.png").unlink()
    (out / "sub/deeper/c.jpg").write_bytes(b"garbage")
    _small("group_friends_table.jpg", 320).save(src / "a.jpg", quality=92)
    s3 = run_batch(src, out, res, progress=False)
    rows3 = manifest(out)
    assert {p: rows3[p]["status"] for p in GOOD} == {
        "a.jpg": "done",
        "sub/b.png": "done",
        "sub/deeper/c.jpg": "done",
        "sub/clip.mp4": "skipped",
    }
    assert (s3["done"], s3["skipped"]) == (3, 1)
    assert rows3["a.jpg"]["input_sha256"] != rows["a.jpg"]["input_sha256"]
    assert read_image(out / "sub/deeper/c.jpg").shape == read_image(src / "sub/deeper/c.jpg").shape
    assert (out / "sub/clip.mp4").stat().st_mtime_ns == before["sub/clip.mp4"]


def test_process_file_row_and_failures(tmp_path: Path, res: Resources) -> None:
    src = tmp_path / "face.png"
    _small("astronaut_single_face.png", 160).save(src)
    row = process_file(src, tmp_path / "out" / "face.png", res)
    assert set(row) == set(FIELDS)
    assert row["status"] == "done" and row["faces"] >= 1
    assert (row["width"], row["height"]) == (160, 160)
    assert row["path"] == str(src) and row["output"] == str(tmp_path / "out" / "face.png")
    # never raises for a bad input: a failed row naming what was expected
    missing = process_file(tmp_path / "nope.jpg", tmp_path / "out" / "nope.jpg", res)
    assert missing["status"] == "failed" and "not found" in missing["error"]
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n")
    row = process_file(other, tmp_path / "out" / "notes.csv", res)
    assert row["status"] == "failed" and "expected an image" in row["error"]
    assert not (tmp_path / "out" / "nope.jpg").exists()


def test_cli_exit_codes(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _small("astronaut_single_face.png", 160).save(src / "ok.png")
    (src / "fake.jpg").write_text("not an image")
    out = str(tmp_path / "out")
    args = ["batch", str(src), "-o", out, "--classifier", "yaleb-mlp", "--device", "cpu", "--quiet"]
    assert main(args) == 3  # PartialFailure: the good file is written, the bad one reported
    err = capsys.readouterr().err
    assert "1 input(s) failed" in err and "fake.jpg" in err
    assert (tmp_path / "out" / "ok.png").is_file()
    (src / "fake.jpg").unlink()
    assert main(args) == 0
    assert manifest(tmp_path / "out")["ok.png"]["status"] == "skipped"
    # not a folder: exit code 2 with what was expected
    assert main(["batch", str(src / "ok.png"), "-o", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "expected an existing folder" in capsys.readouterr().err
    assert main(["batch", str(src), "-o", str(src / "inside"), "--quiet"]) == 2
    assert "inside the input folder" in capsys.readouterr().err


def test_manifest_is_csv_with_every_field(tmp_path: Path, res: Resources) -> None:
    src = tmp_path / "in"
    src.mkdir()
    img = np.full((64, 64, 3), 127, np.uint8)  # no face: done with 0 faces
    Image.fromarray(img).save(src / "flat.png")
    run_batch(src, tmp_path / "out", res, progress=False)
    row = manifest(tmp_path / "out")["flat.png"]
    assert (row["status"], row["faces"], row["kind"]) == ("done", "0", "image")
