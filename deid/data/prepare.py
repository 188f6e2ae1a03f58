"""Convert the official dataset layouts users own into deid's npz format.

Used by ``deid data prepare yaleb|celeba SOURCE -o FILE.npz``. The files written have the
same keys as the shared files described in ``shared/data/README.md`` (``images``, ``labels``,
``subject_ids`` plus per-dataset metadata), so :func:`deid.data.load_dataset` reads them
with ``path=FILE.npz``.

* Yale B: the official ``CroppedYale`` folder (``CroppedYale/yaleBNN/yaleBNN_P00A+000E+00.pgm``).
* CelebA: a folder with ``img_align_celeba/`` (or ``img_celeba/``) JPEGs and
  ``identity_CelebA.txt``, optionally ``list_eval_partition.txt``. The Google Drive layout
  (``Img/``, ``Anno/``, ``Eval/`` subfolders) and Kaggle's nested
  ``img_align_celeba/img_align_celeba/`` with ``list_eval_partition.csv`` are found too.

Both writers are atomic: the npz goes to a temporary file beside the output, which then
replaces the output in one ``os.replace``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from deid.align import similarity
from deid.errors import ConfigError, DataError
from deid.io import Artefact, check_writes, writing
from deid.types import Detections

log = logging.getLogger(__name__)

#: Where the five MTCNN landmarks (left eye, right eye, nose, left and right mouth corner) sit
#: in an aligned CelebA crop, as fractions of the output side (x, y). The ArcFace 112x112
#: template scaled by 0.8 about the centre (``shared/data/README.md``).
TEMPLATE = np.array(
    [(0.3735, 0.4693), (0.6252, 0.4678), (0.5002, 0.6124), (0.3968, 0.7598), (0.6052, 0.7586)],
    dtype=np.float64,
)
#: Side in pixels of the aligned crop before it is area-downsampled to the output size.
WARP_SIZE = 224
#: Black letter-box border added on each side before detection, as a fraction of that side,
#: so MTCNN also finds faces that touch the image edge. (Reflection padding here makes MTCNN
#: find mirror "faces" made of reflected hair and foreheads, larger than the real face; the
#: reflected context goes into the aligned crop through ``warpAffine``'s border instead.)
PAD_FRACTION = 0.2
#: Padded images larger than this (longer side) are detected on a downscaled copy; the
#: alignment still samples the full-resolution image. 640 px letter-box + 2 x 20 % padding.
DETECT_MAX_SIDE = 896
#: Images read and sent to the detector at a time.
BATCH = 16

YALE_LAYOUT = "CroppedYale/yaleBNN/yaleBNN_P00A+000E+00.pgm"
CELEBA_LAYOUT = "img_align_celeba/*.jpg (or img_celeba/*.jpg) and identity_CelebA.txt"

_SUBJECT_RE = re.compile(r"yaleB\d{2}")
_YALE_FILE_RE = re.compile(r"(yaleB\d{2})_P\d{2}A([+-]\d{1,3})E([+-]\d{1,2})\.pgm")


class _Detector(Protocol):
    """What preparation asks of a detector (any :class:`deid.detect.Detector` will do)."""

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]: ...


def celeba_detector() -> _Detector:
    """The detector :func:`prepare_celeba` aligns with: MTCNN (the shipped CelebA crops are
    aligned by its landmarks) for faces from 30 px with p >= 0.9, on copies downscaled to
    :data:`DETECT_MAX_SIDE` (no tiling)."""
    from deid.detect.plain import plain_mtcnn

    return plain_mtcnn(min_face_size=30, min_score=0.9, max_side=DETECT_MAX_SIDE)


# --------------------------------------------------------------------------------------------
# shared helpers


def _save_atomic(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` to a temporary file beside ``out``, then ``os.replace`` it."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            np.savez_compressed(f, **arrays)
        tmp.replace(out)  # os.replace: atomic on one file system
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_out(out: Path, source: Path) -> Path:
    """Fail before the long work if ``out`` cannot be written, or is, holds or lies inside
    ``source`` (:func:`deid.io.check_writes`); create its folder."""
    out = Path(out).expanduser()
    check_writes([("source", source)], [Artefact("dataset file", out)])
    with writing(out, "dataset file"):
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _check_source(source: Path, layout: str) -> Path:
    source = Path(source).expanduser()
    if not source.exists():
        raise DataError(f"{source}: not found; expected a folder with {layout}")
    if not source.is_dir():
        raise DataError(f"{source}: not a folder; expected a folder with {layout}")
    return source


# --------------------------------------------------------------------------------------------
# Extended Yale B (cropped)


def _yale_root(source: Path) -> tuple[Path, list[Path]]:
    """The CroppedYale folder and its ``yaleBNN`` subject folders (sorted)."""
    for root in (source, source / "CroppedYale"):
        if not root.is_dir():
            continue
        subjects = sorted(d for d in root.iterdir() if d.is_dir() and _SUBJECT_RE.fullmatch(d.name))
        if subjects:
            return root, subjects
    raise DataError(
        f"{source}: no yaleBNN subject folders found; expected the official CroppedYale "
        f"folder or its parent ({YALE_LAYOUT})"
    )


def _read_pgm(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode != "L":
                raise DataError(f"{path}: expected an 8-bit grayscale PGM, got mode {im.mode}")
            return np.asarray(im, dtype=np.uint8).copy()
    except OSError as e:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"{path}: not a readable PGM image ({e})") from e


def prepare_yaleb(
    source: Path,
    out: Path,
    size: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert the official ``CroppedYale`` folder to deid's Yale B npz.

    Every ``yaleBNN/yaleBNN_P00A±aaaE±ee.pgm`` is read (P5 PGM, 192x168 in the official
    set). ``*_Ambient.pgm`` images and anything not ending in ``.pgm`` (the ``.pgm.bad``
    frames the database marks as corrupt, ``.info`` files, ``WS_FTP.LOG``) are skipped, which
    gives the usual 2414 images of 38 subjects. ``.pgm`` files whose names do not parse, or
    that name another subject than their folder, are skipped with a warning.

    Keys written (sorted by subject, then file name):

    * ``images`` (N, H, W) uint8: the PGM pixels, box-resized to ``size`` if given.
    * ``labels`` (N,) int64: 0..K-1 in sorted subject order.
    * ``subject_ids`` (K,) ``<U7``: ``yaleB01`` ... ``yaleB39``.
    * ``filenames`` (N,) str: original file names, e.g. ``yaleB01_P00A+000E+00.pgm``.
    * ``azimuth``, ``elevation`` (N,) int16: light-source angles in degrees from the name.

    Args:
        source: the ``CroppedYale`` folder, or a folder that contains it.
        out: the .npz file to write (atomically).
        size: (h, w) to resize to with PIL's exact box filter; ``(48, 42)`` reproduces the
            shared ``yaleb_cropped_48x42.npz``. ``None`` keeps the original size.
        progress: show a tqdm progress bar.

    Returns:
        Summary: ``dataset``, ``n_images``, ``n_subjects``, ``n_skipped`` (unparsable
        ``.pgm`` names), ``image_size`` (h, w) and ``path``.

    Raises:
        DataError: SOURCE missing or without ``yaleBNN/*.pgm``, an unreadable PGM, or an image
            whose size differs from the first one (the message names the file).
        ConfigError: a ``size`` that is not two positive integers.
        OutputError: ``out`` is a directory, is or lies inside SOURCE, or cannot be written.
    """
    source = _check_source(source, YALE_LAYOUT)
    if size is not None:
        if len(size) != 2 or min(int(v) for v in size) < 1:
            raise ConfigError(f"size: expected (height, width) positive integers, got {size!r}")
        size = (int(size[0]), int(size[1]))
    out = _check_out(out, source)
    root, subject_dirs = _yale_root(source)

    files: list[tuple[str, Path, int, int]] = []  # subject, path, azimuth, elevation
    n_skipped = 0
    for sdir in subject_dirs:
        for p in sorted(sdir.iterdir(), key=lambda q: q.name):
            if not p.is_file() or p.suffix != ".pgm" or p.name.endswith("_Ambient.pgm"):
                continue
            m = _YALE_FILE_RE.fullmatch(p.name)
            if m is None or m.group(1) != sdir.name:
                log.warning("skipping %s: expected a name like %s_P00A+000E+00.pgm", p, sdir.name)
                n_skipped += 1
                continue
            files.append((sdir.name, p, int(m.group(2)), int(m.group(3))))
    if not files:
        raise DataError(f"{root}: no image files found; expected {YALE_LAYOUT}")

    subjects = sorted({s for s, *_ in files})
    empty = sorted({d.name for d in subject_dirs} - set(subjects))
    if empty:
        log.warning("subject folders without images, left out: %s", ", ".join(empty))
    index = {s: k for k, s in enumerate(subjects)}

    images: list[np.ndarray] = []
    first_shape: tuple[int, ...] | None = None
    first_file: Path | None = None
    for _, p, _, _ in tqdm(files, desc="yaleb", unit="img", disable=not progress):
        img = _read_pgm(p)
        if first_shape is None:
            first_shape, first_file = img.shape, p
        elif img.shape != first_shape:
            raise DataError(
                f"{p}: image is {img.shape[0]}x{img.shape[1]} (HxW), expected "
                f"{first_shape[0]}x{first_shape[1]} like {first_file}"
            )
        if size is not None and img.shape != size:
            img = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BOX))
        images.append(img)

    arrays = {
        "images": np.stack(images).astype(np.uint8),
        "labels": np.array([index[s] for s, *_ in files], dtype=np.int64),
        "subject_ids": np.array(subjects, dtype="<U7"),
        "filenames": np.array([p.name for _, p, _, _ in files], dtype=str),
        "azimuth": np.array([a for *_, a, _ in files], dtype=np.int16),
        "elevation": np.array([e for *_, e in files], dtype=np.int16),
    }
    _save_atomic(out, arrays)
    n, h, w = arrays["images"].shape
    log.info("wrote %s: %d images of %d subjects, %dx%d", out, n, len(subjects), h, w)
    return {
        "dataset": "yaleb",
        "n_images": int(n),
        "n_subjects": len(subjects),
        "n_skipped": n_skipped,
        "image_size": (int(h), int(w)),
        "path": str(out),
    }


# --------------------------------------------------------------------------------------------
# CelebA


def _first(paths: Sequence[Path], want_dir: bool) -> Path | None:
    return next((p for p in paths if (p.is_dir() if want_dir else p.is_file())), None)


def _celeba_layout(source: Path) -> tuple[Path, Path, Path | None]:
    """(image folder, identity file, partition file or None) of a CelebA folder."""
    subs = ("img_align_celeba", "img_celeba", "Img/img_align_celeba", "Img/img_celeba")
    img_dir = _first([source / s for s in subs], want_dir=True)
    if img_dir is not None and (img_dir / img_dir.name).is_dir():
        img_dir = img_dir / img_dir.name  # Kaggle's img_align_celeba/img_align_celeba/
    ident = _first(
        [source / "identity_CelebA.txt", source / "Anno" / "identity_CelebA.txt"], want_dir=False
    )
    if img_dir is None or ident is None:
        missing = " and no ".join(
            what
            for what, found in (
                ("img_align_celeba/ folder", img_dir),
                ("identity_CelebA.txt", ident),
            )
            if found is None
        )
        raise DataError(
            f"{source}: no {missing}; expected {CELEBA_LAYOUT} (list_eval_partition.txt optional)"
        )
    part = _first(
        [
            source / "list_eval_partition.txt",
            source / "Eval" / "list_eval_partition.txt",
            source / "list_eval_partition.csv",
        ],
        want_dir=False,
    )
    return img_dir, ident, part


def _read_name_int(path: Path) -> dict[str, int]:
    """``name value`` lines (spaces or a comma) -> dict; lines that do not parse are skipped."""
    table: dict[str, int] = {}
    n_bad = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.replace(",", " ").split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                table[parts[0]] = int(parts[1])
            elif parts:
                n_bad += 1
    if n_bad:
        log.debug("%s: skipped %d lines that are not 'name number'", path, n_bad)
    return table


def _read_rgb(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.warning("skipping %s: not a readable image (%s)", path, e)
        return None


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """Warp a face onto :data:`TEMPLATE` and downsize it.

    Args:
        image: (H, W, 3) uint8 RGB image the landmarks refer to.
        landmarks: (5, 2) float landmark pixels (MTCNN order).
        size: output side in pixels (at most :data:`WARP_SIZE`).

    Returns:
        (size, size, 3) uint8 RGB: a similarity warp to ``WARP_SIZE`` px (bilinear, reflected
        border), then ``cv2.INTER_AREA`` down to ``size``.
    """
    m = similarity(landmarks, TEMPLATE * WARP_SIZE)
    warped = cv2.warpAffine(
        image,
        m[:2],
        (WARP_SIZE, WARP_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    if size == WARP_SIZE:
        return warped
    return cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)


def _pick_face(det: Detections, inner: tuple[int, int, int, int]) -> int | None:
    """Index of the largest face whose box centre lies in ``inner`` (x1, y1, x2, y2)."""
    if not len(det):
        return None
    cx = (det.boxes[:, 0] + det.boxes[:, 2]) / 2
    cy = (det.boxes[:, 1] + det.boxes[:, 3]) / 2
    x1, y1, x2, y2 = inner
    ok = (cx >= x1) & (cx < x2) & (cy >= y1) & (cy < y2)  # not mostly in the letter-box
    if not ok.any():
        return None
    area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
    return int(np.argmax(np.where(ok, area, -np.inf)))


def prepare_celeba(
    source: Path,
    out: Path,
    min_images: int = 20,
    max_identities: int | None = None,
    size: int = 64,
    progress: bool = True,
    detector: _Detector | None = None,
) -> dict[str, Any]:
    """Convert an official CelebA folder to deid's aligned identity npz.

    1. Read ``identity_CelebA.txt`` (``000001.jpg 2880`` lines; a header or any line that
       does not parse is skipped) and keep the images present in the image folder.
    2. Keep identities with at least ``min_images`` images, in increasing identity number;
       with ``max_identities``, only the first that many.
    3. Detect faces with MTCNN (``min_face_size=30``, p >= 0.9) on each image letter-boxed
       by a black border of 20 % of each side, so faces at the edge are found too; padded
       images larger than :data:`DETECT_MAX_SIDE` are detected on a downscaled copy. The
       largest face whose box centre lies in the image is aligned by a similarity transform
       of its five landmarks onto :data:`TEMPLATE`, sampling the full-resolution image with
       a reflected border so crops keep context (224 px, bilinear), and area-downsized to
       ``size``. Images with no face are skipped and counted; unreadable ones too.
    4. Identities left with fewer than ``min_images`` faces are dropped.

    Keys written (sorted by identity number, then file name):

    * ``images`` (N, size, size, 3) uint8 RGB aligned faces.
    * ``labels`` (N,) int64: 0..K-1 in increasing identity number.
    * ``subject_ids`` (K,) int64: CelebA identity numbers.
    * ``celeba_identity`` (N,) int64: ``subject_ids[labels]``.
    * ``celeba_image`` (N,) str: file names (``001085.jpg``).
    * ``split`` (N,) int8: 1 (test) for every 5th image of each identity in file-name order
      (index i within the identity, test when ``i % 5 == 4``), else 0 (train): the shared
      file's rule.
    * ``mtcnn_prob`` (N,) float32: MTCNN probability of the chosen face.
    * ``eval_partition`` (N,) int8, only when ``list_eval_partition.txt`` is present:
      CelebA's official 0/1/2 (train/val/test) partition, -1 for images it does not list.
      That partition separates *identities* (no person is in two parts), so it cannot serve
      as an identity-classification split; ``split`` is what deid's loaders use.

    Args:
        source: folder with ``img_align_celeba/`` (or ``img_celeba/``) and
            ``identity_CelebA.txt``; the ``Img/``, ``Anno/``, ``Eval/`` layout also works.
        out: the .npz file to write (atomically).
        min_images: fewest images an identity needs, before and after detection.
        max_identities: keep at most this many identities (the lowest identity numbers).
        size: side of the output crops in pixels, 8..224.
        progress: show a tqdm progress bar.
        detector: anything with ``detect(frames) -> list[Detections]``; default
            :func:`celeba_detector` (MTCNN, ``min_face_size=30``, ``min_score=0.9``,
            ``max_side=DETECT_MAX_SIDE``).

    Returns:
        Summary: ``dataset``, ``n_images`` (kept), ``n_identities``, ``n_no_face``,
        ``n_unreadable``, ``n_dropped_identities`` (fell below ``min_images`` after
        detection) and ``path``.

    Raises:
        DataError: SOURCE missing or without the layout above, or no identity left.
        ConfigError: ``min_images``, ``max_identities`` or ``size`` out of range.
        OutputError: ``out`` is a directory, is or lies inside SOURCE, or cannot be written.
    """
    source = _check_source(source, CELEBA_LAYOUT)
    if min_images < 1:
        raise ConfigError(f"min_images: expected >= 1, got {min_images}")
    if max_identities is not None and max_identities < 1:
        raise ConfigError(f"max_identities: expected >= 1 or None, got {max_identities}")
    if not 8 <= size <= WARP_SIZE:
        raise ConfigError(f"size: expected 8..{WARP_SIZE} pixels, got {size}")
    out = _check_out(out, source)
    img_dir, ident_file, part_file = _celeba_layout(source)
    todo = _celeba_todo(source, img_dir, ident_file, min_images, max_identities)
    ids = sorted({i for i, _ in todo})
    log.info("celeba: %d images of %d identities to align", len(todo), len(ids))

    if detector is None:
        detector = celeba_detector()
    faces, n_no_face, n_unreadable = _align_celeba(todo, img_dir, detector, size, progress)

    kept = [i for i in ids if len(faces[i]) >= min_images]
    n_dropped = len(ids) - len(kept)
    if n_dropped:
        log.info("dropped %d identities left with < %d faces", n_dropped, min_images)
    if not kept:
        raise DataError(
            f"{source}: no identity kept >= {min_images} detected faces "
            f"({n_no_face} images had no face)"
        )
    arrays = _celeba_arrays(kept, faces, part_file)
    _save_atomic(out, arrays)
    log.info(
        "wrote %s: %d faces of %d identities (%d without a face)",
        out,
        len(arrays["labels"]),
        len(kept),
        n_no_face,
    )
    return {
        "dataset": "celeba",
        "n_images": len(arrays["labels"]),
        "n_identities": len(kept),
        "n_no_face": n_no_face,
        "n_unreadable": n_unreadable,
        "n_dropped_identities": n_dropped,
        "path": str(out),
    }


def _celeba_todo(
    source: Path, img_dir: Path, ident_file: Path, min_images: int, max_identities: int | None
) -> list[tuple[int, str]]:
    """(identity, file name) of the images to align: those listed and on disk, of the
    identities with at least ``min_images`` of them (the first ``max_identities``), sorted by
    identity number, then file name.

    Raises:
        DataError: nothing listed, nothing listed on disk, or no identity with enough images.
    """
    identity = _read_name_int(ident_file)
    if not identity:
        raise DataError(f"{ident_file}: no '000001.jpg 2880' lines; expected {CELEBA_LAYOUT}")
    on_disk = {p.name for p in img_dir.iterdir()}
    by_id: dict[int, list[str]] = {}
    for name, ident in identity.items():
        if name in on_disk:
            by_id.setdefault(ident, []).append(name)
    if not by_id:
        raise DataError(
            f"{img_dir}: none of the {len(identity)} images listed in {ident_file.name} is "
            f"there; expected {CELEBA_LAYOUT}"
        )
    ids = sorted(i for i, names in by_id.items() if len(names) >= min_images)
    if max_identities is not None:
        ids = ids[:max_identities]
    if not ids:
        raise DataError(
            f"{source}: no identity has >= {min_images} images on disk "
            f"(most: {max(len(v) for v in by_id.values())}); lower min_images"
        )
    return [(i, name) for i in ids for name in sorted(by_id[i])]


def _align_celeba(
    todo: list[tuple[int, str]], img_dir: Path, detector: _Detector, size: int, progress: bool
) -> tuple[dict[int, list[tuple[str, np.ndarray, float]]], int, int]:
    """Detect and align the face of each image, :data:`BATCH` images at a time.

    Returns:
        Per identity, (file name, aligned crop, face probability) of each image with a face;
        the number of images without a face; the number of unreadable images.
    """
    faces: dict[int, list[tuple[str, np.ndarray, float]]] = {i: [] for i, _ in todo}
    n_no_face = n_unreadable = 0
    with tqdm(total=len(todo), desc="celeba", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), BATCH):
            chunk = todo[start : start + BATCH]
            originals: list[np.ndarray] = []
            padded: list[np.ndarray] = []
            keep: list[tuple[int, str]] = []
            for ident, name in chunk:
                rgb = _read_rgb(img_dir / name)
                if rgb is None:
                    n_unreadable += 1
                    continue
                h, w = rgb.shape[:2]
                ph, pw = round(PAD_FRACTION * h), round(PAD_FRACTION * w)
                originals.append(rgb)
                padded.append(
                    cv2.copyMakeBorder(rgb, ph, ph, pw, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
                )
                keep.append((ident, name))
            dets = detector.detect(padded) if padded else []
            for (ident, name), rgb, img, det in zip(keep, originals, padded, dets, strict=True):
                ph, pw = (img.shape[0] - rgb.shape[0]) // 2, (img.shape[1] - rgb.shape[1]) // 2
                k = _pick_face(det, (pw, ph, pw + rgb.shape[1], ph + rgb.shape[0]))
                if k is None:
                    n_no_face += 1
                    log.debug("no face in %s", name)
                    continue
                crop = align_face(rgb, det.landmarks[k] - np.float32([pw, ph]), size)
                faces[ident].append((name, crop, float(det.scores[k])))
            bar.update(len(chunk))
    return faces, n_no_face, n_unreadable


def _celeba_arrays(
    kept: list[int],
    faces: dict[int, list[tuple[str, np.ndarray, float]]],
    part_file: Path | None,
) -> dict[str, np.ndarray]:
    """The npz arrays of :func:`prepare_celeba` for the identities kept."""
    rows = [(lab, i, j, *face) for lab, i in enumerate(kept) for j, face in enumerate(faces[i])]
    arrays: dict[str, np.ndarray] = {
        "images": np.stack([r[4] for r in rows]).astype(np.uint8),
        "labels": np.array([r[0] for r in rows], dtype=np.int64),
        "subject_ids": np.array(kept, dtype=np.int64),
        "celeba_identity": np.array([r[1] for r in rows], dtype=np.int64),
        "celeba_image": np.array([r[3] for r in rows], dtype=str),
        "split": np.array([r[2] % 5 == 4 for r in rows], dtype=np.int8),
        "mtcnn_prob": np.array([r[5] for r in rows], dtype=np.float32),
    }
    if part_file is not None:
        partition = _read_name_int(part_file)
        arrays["eval_partition"] = np.array([partition.get(r[3], -1) for r in rows], dtype=np.int8)
        n_missing = int((arrays["eval_partition"] < 0).sum())
        if n_missing:
            log.warning("%s does not list %d kept images (eval_partition -1)", part_file, n_missing)
    return arrays


PREPARERS: dict[str, Callable[..., dict[str, Any]]] = {
    "yaleb": prepare_yaleb,
    "celeba": prepare_celeba,
}
