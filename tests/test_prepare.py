"""Tests of deid.data.prepare on tiny fake official layouts built in tmp_path from shared data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from deid.data import load_npz
from deid.data.prepare import PREPARERS, TEMPLATE, align_face, prepare_celeba, prepare_yaleb
from deid.errors import DataError, OutputError
from deid.types import Detections

DATA = Path(os.environ.get("DEID_DATA_DIR", "/work/shared/data"))
YALE_FULL = DATA / "yaleb" / "yaleb_cropped_192x168.npz"
YALE_SMALL = DATA / "yaleb" / "yaleb_cropped_48x42.npz"
CELEBA = DATA / "celeba" / "celeba_identities_aligned_64x64.npz"


def _need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared data not found: {', '.join(missing)} (set DEID_DATA_DIR)")


def _write_pgm(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="PPM")  # 2-D uint8: binary P5 PGM


# --------------------------------------------------------------------------------------------
# Yale B


@pytest.fixture(scope="module")
def yale_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """tmp/CroppedYale with 3 subjects x 4 real images, plus files that must be skipped."""
    _need(YALE_FULL, YALE_SMALL)
    d = load_npz(YALE_FULL)
    root = tmp_path_factory.mktemp("yale")
    yale = root / "CroppedYale"
    names: list[str] = []
    for subject in ("yaleB01", "yaleB10", "yaleB15"):
        k = int(np.flatnonzero(d["subject_ids"] == subject)[0])
        idx = np.flatnonzero(d["labels"] == k)[[0, 10, 40, 60]]
        for i in idx:
            name = str(d["filenames"][i])
            _write_pgm(yale / subject / name, d["images"][i])
            names.append(name)
        # same-named decoys of another size: they would raise if they were not skipped
        _write_pgm(yale / subject / f"{subject}_P00_Ambient.pgm", np.zeros((20, 10), np.uint8))
        (yale / subject / f"{subject}_P00.info").write_text(f"{subject}_P00A+000E+00.pgm\n")
    _write_pgm(yale / "yaleB01" / "yaleB01_P00A+050E-40.pgm.bad", np.zeros((20, 10), np.uint8))
    (yale / "WS_FTP.LOG").write_text("log\n")
    return root, sorted(names)


@pytest.mark.parametrize("below", [False, True], ids=["CroppedYale", "parent"])
def test_prepare_yaleb_matches_shared(
    yale_layout: tuple[Path, list[str]], tmp_path: Path, below: bool
) -> None:
    root, names = yale_layout
    out = tmp_path / "sub" / "yale.npz"
    source = root if below else root / "CroppedYale"
    summary = prepare_yaleb(source, out, size=(48, 42), progress=False)
    assert summary["n_images"] == 12 and summary["n_subjects"] == 3
    assert summary["path"] == str(out)
    assert not list(out.parent.glob("*.tmp"))

    with np.load(out) as f:
        got = {k: f[k] for k in f.files}
    assert set(got) == {"images", "labels", "subject_ids", "filenames", "azimuth", "elevation"}
    assert got["images"].shape == (12, 48, 42) and got["images"].dtype == np.uint8
    assert got["labels"].dtype == np.int64
    assert got["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert got["subject_ids"].dtype == np.dtype("<U7")
    assert got["subject_ids"].tolist() == ["yaleB01", "yaleB10", "yaleB15"]
    assert got["filenames"].tolist() == names
    assert got["azimuth"].dtype == np.int16 and got["elevation"].dtype == np.int16

    ref = load_npz(YALE_SMALL)
    pos = {str(n): i for i, n in enumerate(ref["filenames"])}
    idx = np.array([pos[n] for n in names])
    np.testing.assert_array_equal(got["azimuth"], ref["azimuth"][idx])
    np.testing.assert_array_equal(got["elevation"], ref["elevation"][idx])
    diff = np.abs(got["images"].astype(int) - ref["images"][idx].astype(int))
    assert diff.max() <= 1
    # the name parse itself: yaleB01's 41st image is A-020E+10 -> (-20, 10)
    i = names.index("yaleB01_P00A-020E+10.pgm")
    assert (int(got["azimuth"][i]), int(got["elevation"][i])) == (-20, 10)


def test_prepare_yaleb_keeps_size_by_default(yale_layout: tuple[Path, list[str]], tmp_path: Path):
    root, names = yale_layout
    prepare_yaleb(root, tmp_path / "y.npz", progress=False)
    with np.load(tmp_path / "y.npz") as f:
        assert f["images"].shape == (12, 192, 168)
        first = f["images"][0]
    ref = load_npz(YALE_FULL)
    np.testing.assert_array_equal(first, ref["images"][list(ref["filenames"]).index(names[0])])


def test_prepare_yaleb_size_mismatch_names_file(tmp_path: Path) -> None:
    yale = tmp_path / "CroppedYale"
    _write_pgm(yale / "yaleB01" / "yaleB01_P00A+000E+00.pgm", np.zeros((192, 168), np.uint8))
    _write_pgm(yale / "yaleB02" / "yaleB02_P00A+000E+00.pgm", np.zeros((190, 168), np.uint8))
    out = tmp_path / "y.npz"
    with pytest.raises(DataError, match=r"yaleB02_P00A\+000E\+00\.pgm.*190x168"):
        prepare_yaleb(yale, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_prepare_yaleb_bad_source(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "y.npz"
    with pytest.raises(DataError, match=r"not found.*CroppedYale/yaleBNN"):
        prepare_yaleb(tmp_path / "nope", out, progress=False)
    (src / "CroppedYale" / "other").mkdir(parents=True)
    with pytest.raises(DataError, match="CroppedYale/yaleBNN"):
        prepare_yaleb(src, out, progress=False)
    (src / "CroppedYale" / "yaleB01").mkdir()
    (src / "CroppedYale" / "yaleB01" / "yaleB01_P00.info").write_text("x\n")
    with pytest.raises(DataError, match="CroppedYale/yaleBNN"):
        prepare_yaleb(src, out, progress=False)
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match="is an existing folder"):
        prepare_yaleb(src, tmp_path / "folder", progress=False)
    with pytest.raises(OutputError, match="is the source folder"):
        prepare_yaleb(src, src, progress=False)
    with pytest.raises(OutputError, match="is inside the source folder"):
        prepare_yaleb(src, src / "y.npz", progress=False)
    assert not out.exists() and not (src / "y.npz").exists()


# --------------------------------------------------------------------------------------------
# CelebA


def _paste(face64: np.ndarray) -> np.ndarray:
    """A 64x64 aligned face, upscaled to 128 and reflect-padded into a 178x218 (WxH) canvas."""
    big = cv2.resize(face64, (128, 128), interpolation=cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(big, 45, 45, 25, 25, cv2.BORDER_REFLECT)


def _write_celeba(
    root: Path,
    images: Sequence[tuple[str, int, np.ndarray]],
    partition: dict[str, int] | None,
    extra_listed: Sequence[tuple[str, int]] = (),
) -> None:
    img_dir = root / "img_align_celeba"
    img_dir.mkdir(parents=True)
    for name, _, img in images:
        Image.fromarray(img).save(img_dir / name, quality=95)
    lines = ["image_id identity", ""]  # header (and a blank line) that must be skipped
    lines += [f"{name} {ident}" for name, ident, _ in images]
    lines += [f"{name} {ident}" for name, ident in extra_listed]  # listed, not on disk
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    if partition is not None:
        text = "".join(f"{n} {p}\n" for n, p in partition.items())
        (root / "list_eval_partition.txt").write_text(text)


@pytest.fixture(scope="module")
def celeba_ref() -> dict[str, np.ndarray]:
    _need(CELEBA)
    return load_npz(CELEBA)


def test_prepare_celeba_real_mtcnn(celeba_ref: dict[str, np.ndarray], tmp_path: Path) -> None:
    ref = celeba_ref
    rng = np.random.default_rng(0)
    blank = np.full((218, 178, 3), 128, np.uint8)
    noise = rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)
    images: list[tuple[str, int, np.ndarray]] = []
    chosen: list[str] = []
    for k in (0, 1, 2):  # 3 identities x 5 real faces, first by file name
        idx = np.flatnonzero(ref["labels"] == k)[:5]
        ident = int(ref["subject_ids"][k])
        for i in idx:
            images.append((str(ref["celeba_image"][i]), ident, _paste(ref["images"][i])))
            chosen.append(str(ref["celeba_image"][i]))
    first_ident = int(ref["subject_ids"][0])
    images.append(("000000.jpg", first_ident, blank))  # no face: sorts first, split recomputed
    # identity 1: 2 faces + 1 blank -> falls below min_images=3 after detection
    j = np.flatnonzero(ref["labels"] == 3)[:2]
    images += [(f"90000{n}.jpg", 1, _paste(ref["images"][i])) for n, i in enumerate(j)]
    images.append(("900002.jpg", 1, noise))
    # identity 999999: too few images before detection (never detected)
    images += [("900010.jpg", 999999, blank), ("900011.jpg", 999999, blank)]
    partition = {name: n % 3 for n, (name, _, _) in enumerate(images)}
    _write_celeba(tmp_path / "celeba", images, partition, extra_listed=[("123456.jpg", 7)])

    out = tmp_path / "celeba.npz"
    s = prepare_celeba(tmp_path / "celeba", out, min_images=3, progress=False)
    assert s["n_images"] == 15 and s["n_identities"] == 3
    assert s["n_no_face"] == 2 and s["n_dropped_identities"] == 1
    with np.load(out) as f:
        got = {k: f[k] for k in f.files}
    assert set(got) == {
        "images",
        "labels",
        "subject_ids",
        "celeba_identity",
        "celeba_image",
        "split",
        "mtcnn_prob",
        "eval_partition",
    }
    assert got["images"].shape == (15, 64, 64, 3) and got["images"].dtype == np.uint8
    assert got["labels"].dtype == np.int64 and got["labels"].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    np.testing.assert_array_equal(got["subject_ids"], ref["subject_ids"][:3])
    assert got["subject_ids"].dtype == np.int64
    np.testing.assert_array_equal(got["celeba_identity"], got["subject_ids"][got["labels"]])
    assert got["celeba_image"].tolist() == chosen
    assert got["split"].dtype == np.int8 and got["split"].tolist() == [0, 0, 0, 0, 1] * 3
    assert got["mtcnn_prob"].dtype == np.float32 and (got["mtcnn_prob"] >= 0.9).all()
    assert got["eval_partition"].dtype == np.int8
    assert got["eval_partition"].tolist() == [partition[n] for n in chosen]

    pos = {str(n): i for i, n in enumerate(ref["celeba_image"])}
    for name, img in zip(chosen, got["images"], strict=True):
        a = img.astype(np.float64)
        b = ref["images"][pos[name]].astype(np.float64)
        mad = np.abs(a - b).mean()
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert mad < 40 or corr > 0.8, f"{name}: mean abs diff {mad:.1f}, correlation {corr:.2f}"


class _FakeDetector:
    """One face per frame: template landmarks over the frame's central square, plus a bigger
    one centred in the letter-box border that must not be picked. Counts the frames."""

    def __init__(self) -> None:
        self.frames = 0

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        out = []
        for f in frames:
            self.frames += 1
            assert f.shape == (84, 70, 3) and not f[:12].any()  # 60x50 + 20 % black each side
            h, w = f.shape[:2]
            side = min(h, w) / 2
            x0, y0 = (w - side) / 2, (h - side) / 2
            lm = (TEMPLATE * side + [x0, y0]).astype(np.float32)[None]
            box = np.array([[x0, y0, x0 + side, y0 + side]], np.float32)
            mirror = np.array([[0, 0, w, h * 0.25]], np.float32)
            out.append(
                Detections(
                    np.concatenate([mirror, box]),
                    np.array([0.99, 0.95], np.float32),
                    np.concatenate([lm * 0, lm]),
                )
            )
        return out


def test_prepare_celeba_max_identities_fake_detector(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = [
        (f"{100 * ident + n:06d}.jpg", ident, rng.integers(0, 255, (60, 50, 3), dtype=np.uint8))
        for ident in (30, 10, 20)
        for n in range(4)
    ]
    _write_celeba(tmp_path / "c", images, partition=None)
    det = _FakeDetector()
    s = PREPARERS["celeba"](
        tmp_path / "c",
        tmp_path / "c.npz",
        min_images=4,
        max_identities=2,
        size=32,
        progress=False,
        detector=det,
    )
    assert det.frames == 8  # identities 10 and 20 only
    assert s["n_images"] == 8 and s["n_identities"] == 2 and s["n_no_face"] == 0
    with np.load(tmp_path / "c.npz") as f:
        assert "eval_partition" not in f.files
        assert f["subject_ids"].tolist() == [10, 20]
        assert f["images"].shape == (8, 32, 32, 3)
        assert f["split"].tolist() == [0, 0, 0, 0] * 2
        np.testing.assert_allclose(f["mtcnn_prob"], 0.95)
        first = f["images"][0]
        assert f["celeba_image"][0] == "001000.jpg"
    # the crop samples the unpadded image: landmarks shifted back by the border (10, 12)
    rgb = np.asarray(Image.open(tmp_path / "c" / "img_align_celeba" / "001000.jpg"))
    lm = TEMPLATE * 35 + [(70 - 35) / 2 - 10, (84 - 35) / 2 - 12]
    want = align_face(rgb, lm, 32)  # float32 landmarks in the pipeline: allow 1 grey level
    assert np.abs(first.astype(int) - want).max() <= 1


def test_prepare_celeba_bad_source(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "c.npz"
    with pytest.raises(DataError, match=r"not found.*img_align_celeba"):
        prepare_celeba(tmp_path / "nope", out, progress=False)
    (src / "img_align_celeba").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no identity_CelebA\.txt; expected img_align_celeba"):
        prepare_celeba(src, out, progress=False)
    (src / "identity_CelebA.txt").write_text("000001.jpg 2880\n")
    with pytest.raises(DataError, match="none of the 1 images"):
        prepare_celeba(src, out, progress=False)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "img_align_celeba" / "000001.jpg")
    with pytest.raises(DataError, match="no identity has >= 20 images"):
        prepare_celeba(src, out, progress=False)
    assert not out.exists()
