"""Still images (Pillow), input classification, and the check of a run's writes.

Images are ``(H, W, 3) uint8 RGB`` numpy arrays; what a file holds beyond that (greyscale,
alpha, 16-bit depth) is read as a :class:`PixelFormat` and given back on writing. Files are
written atomically: to a hidden temporary file in the destination folder, then renamed with
``os.replace``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deid.errors import InputError, OutputError, ShapeError
from deid.io.paths import Artefact, check_writes, report_path, tmp_beside
from deid.io.video import WRITABLE_VIDEO_FORMATS

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".mov", ".avi", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".ts"}

_PIL_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}

_EXPECTED_IMAGE = "not a readable image (expected jpg, png, ...)"

# What Pillow raises on unreadable files: UnidentifiedImageError and "truncated" are
# OSError, some plugins raise SyntaxError or ValueError, oversized images raise
# DecompressionBombError (an Exception subclass of its own).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _unreadable(path: Path, e: BaseException) -> InputError:
    """The error for an image Pillow would not read: one over Pillow's decompression-bomb
    guard is an image, just too large to hold (an orthomosaic, say), and says so."""
    if isinstance(e, Image.DecompressionBombError):
        return InputError(
            path,
            f"an image larger than the {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels deid reads "
            f"(Pillow's guard against decompression bombs: {e}); expected a smaller image: "
            "cut it into tiles",
        )
    return InputError(path, f"{_EXPECTED_IMAGE}: {e}")


def _exts(exts: set[str]) -> str:
    return ", ".join(sorted(exts))


@dataclass(frozen=True, eq=False)
class PixelFormat:
    """What an image file holds beyond the ``(H, W, 3) uint8 RGB`` array deid works on, so
    that :func:`write_image` can give it back: a greyscale image stays greyscale, an alpha
    channel is kept as it was, a 16-bit greyscale image (a thermal camera's, say) stays
    16-bit with every pixel deid did not change kept at its full depth.

    Attributes:
        grey: the file is greyscale (Pillow modes 1, L, LA, I, I;16, F).
        alpha: (H, W) uint8 alpha channel, or None.
        deep: (H, W) uint16 values of a 16-bit greyscale file, or None.
        icc: the file's ICC colour profile (a phone's Display P3, a camera's Adobe RGB), kept
            so the colours show as they did; None: none, or one for another colour space
            than deid writes (CMYK).
    """

    grey: bool = False
    alpha: np.ndarray | None = None
    deep: np.ndarray | None = None
    icc: bytes | None = None


_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}  # of _PIL_FORMATS' formats, those that hold alpha
_DEEP_FORMATS = {"PNG", "TIFF"}  # ... and 16-bit greyscale


def _to_rgb(img: Image.Image) -> tuple[np.ndarray, PixelFormat]:
    """Any Pillow mode to (H, W, 3) uint8 RGB (alpha dropped, 16-bit scaled to 8-bit), and
    what was dropped (:class:`PixelFormat`)."""
    alpha = None
    icc = img.info.get("icc_profile") or None
    if img.mode in ("CMYK", "LAB", "HSV"):  # a profile of a space deid does not write
        icc = None
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        alpha = np.asarray(img.convert("RGBA"))[:, :, 3].copy()
    grey = img.mode in _GREY_MODES
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img)
        deep = None
        if img.mode == "F":
            gray = np.clip(arr, 0, 255).round().astype(np.uint8)
        else:  # 16-bit greyscale (Pillow reads 16-bit PNG as I or I;16)
            wide = np.clip(arr.astype(np.int64), 0, 65535)
            gray = (wide // 257).astype(np.uint8)
            deep = wide.astype(np.uint16)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
        return rgb, PixelFormat(grey=True, alpha=alpha, deep=deep, icc=icc)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy(), PixelFormat(grey=grey, alpha=alpha, icc=icc)


def read_image(path: Path | str) -> np.ndarray:
    """Read an image file, upright (EXIF orientation applied), as RGB.

    Greyscale, palette, CMYK and 16-bit images are converted; alpha is dropped
    (:func:`read_image_format` also says what was dropped, for :func:`write_image`).

    Returns:
        image: (H, W, 3) uint8 RGB.

    Raises:
        InputError: the path is missing or not a readable image.
    """
    return read_image_format(path)[0]


@dataclass(frozen=True, eq=False)
class Pages:
    """What :func:`read_image_pages` read beside the frames of an image file, for
    :func:`write_image_pages`: each frame's :class:`PixelFormat`, and an animation's
    timing.

    Attributes:
        formats: one per frame.
        durations: ms each frame shows (an animated WebP or PNG), else None.
        loop: an animation's loop count (0: for ever), else None.
    """

    formats: list[PixelFormat]
    durations: list[int] | None = None
    loop: int | None = None


# of _PIL_FORMATS' formats, those that hold several frames (a multi-page TIFF, an animated
# WebP or PNG)
_MULTI_FORMATS = {"TIFF", "WEBP", "PNG"}


def count_frames(path: Path | str) -> int:
    """How many frames (pages) an image file holds: 1 for most; an animated WebP or PNG,
    a multi-page TIFF or an MPO JPEG more.

    Raises:
        InputError: the path is missing or not a readable image.
    """
    with _opened(path) as img:
        return int(getattr(img, "n_frames", 1) or 1)


def read_image_pages(path: Path | str) -> tuple[list[np.ndarray], Pages]:
    """Every frame of an image file as :func:`read_image` reads its first: the pages of a
    multi-page TIFF, the frames of an animated WebP or PNG (each as shown, composed), and
    what :func:`write_image_pages` needs to write them back.

    Raises:
        InputError: the path is missing or not a readable image.
    """
    frames, formats, durations = [], [], []
    with _opened(path) as img:
        n = int(getattr(img, "n_frames", 1) or 1)
        for i in range(n):
            if i:
                img.seek(i)
            img.load()
            durations.append(int(img.info.get("duration", 0) or 0))
            rgb, fmt = _to_rgb(ImageOps.exif_transpose(img))
            frames.append(rgb)
            formats.append(fmt)
        loop = img.info.get("loop")
        animated = n > 1 and img.format in ("WEBP", "PNG")
    return frames, Pages(
        formats,
        durations if animated else None,
        int(loop) if animated and loop is not None else None,
    )


def read_image_format(path: Path | str) -> tuple[np.ndarray, PixelFormat]:
    """:func:`read_image`, and what of the file the RGB array does not hold (greyscale,
    alpha, 16-bit depth), for :func:`write_image`'s ``like``.

    Raises:
        InputError: the path is missing or not a readable image.
    """
    with _opened(path) as img:
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))


@contextlib.contextmanager
def _opened(path: Path | str) -> Iterator[Image.Image]:
    """An image file opened with Pillow; a missing or unreadable file (also while the body
    reads it) raises :class:`InputError` naming what was expected."""
    path = Path(path)
    if not path.is_file():
        reason = "file not found" if not path.exists() else "is not a regular file"
        raise InputError(path, f"{reason}; expected an image ({_exts(IMAGE_EXTS)})")
    try:
        with Image.open(path) as img:
            yield img
    except UnidentifiedImageError as e:
        raise InputError(path, _EXPECTED_IMAGE) from e
    except _PIL_ERRORS as e:
        raise _unreadable(path, e) from e


def write_image(
    path: Path | str, rgb: np.ndarray, quality: int = 95, like: PixelFormat | None = None
) -> None:
    """Write an RGB image atomically; the format follows the suffix.

    PNG, BMP and TIFF are lossless. JPEG uses ``quality`` with 4:4:4 chroma (no
    subsampling, so fine pixel changes survive better); WebP uses ``quality``, or lossless
    at 100. No metadata (EXIF, GPS) is written; the input's ICC colour profile is, through
    ``like``. Missing parent folders are created.

    ``like`` (the input's :class:`PixelFormat`, from :func:`read_image_format`): a greyscale
    input is written greyscale (where ``rgb`` is grey, as deid's protection keeps a grey
    face), its alpha channel kept where the format holds one (PNG, WebP, TIFF), a 16-bit
    greyscale input written 16-bit (PNG, TIFF): each pixel whose 8-bit value ``rgb`` left
    as read keeps its 16-bit value, a changed one is the 8-bit value times 257 (so it reads
    back as that 8-bit value).

    Args:
        path: output file with a suffix in :data:`IMAGE_EXTS`.
        rgb: (H, W, 3) uint8 RGB.
        quality: 1..100 for JPEG and WebP.
        like: what of the input to keep (None: plain RGB).

    Raises:
        OutputError: unsupported suffix, or the file cannot be written (``path`` untouched).
        ShapeError: ``rgb`` is not (H, W, 3).
    """
    path = Path(path)
    fmt = _PIL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(path, f"unsupported image suffix; expected one of {_exts(IMAGE_EXTS)}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ShapeError("rgb", rgb.shape, "(H, W, 3) RGB")
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected dtype uint8, got {rgb.dtype}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality: expected 1..100, got {quality}")
    options: dict[str, object] = {}
    if fmt == "JPEG":
        options = {"quality": quality, "subsampling": 0}
    elif fmt == "WEBP":
        options = {"quality": quality, "lossless": quality == 100}
    img = _like(rgb, like, fmt, path) if like is not None else Image.fromarray(rgb)
    _keep_icc(options, img, like, fmt)
    _save(path, img, fmt, options)
    log.debug("wrote %s (%dx%d %s)", path, rgb.shape[1], rgb.shape[0], fmt)


def write_image_pages(
    path: Path | str, frames: Sequence[np.ndarray], quality: int, pages: Pages
) -> None:
    """Write the frames :func:`read_image_pages` read (each as :func:`write_image` would,
    ``like`` its own format), as one file: a multi-page TIFF, an animated WebP or PNG with
    the input's timing. A format of one frame (JPEG, BMP) gets the first frame and a
    warning (:func:`deid.pipeline` refuses such an output up front).

    Raises:
        OutputError: as :func:`write_image`.
    """
    path = Path(path)
    if len(frames) != len(pages.formats) or not frames:
        raise ValueError(f"frames: expected {len(pages.formats)}, got {len(frames)}")
    fmt = _PIL_FORMATS.get(path.suffix.lower())
    if len(frames) == 1 or fmt not in _MULTI_FORMATS:
        if len(frames) > 1:
            log.warning("%s: %s holds one frame; %d frames not written", path, fmt, len(frames) - 1)
        write_image(path, frames[0], quality, like=pages.formats[0])
        return
    for i, rgb in enumerate(frames):
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ShapeError(f"frames[{i}]", rgb.shape, "(H, W, 3) uint8 RGB")
    imgs = [_like(rgb, like, fmt, path) for rgb, like in zip(frames, pages.formats, strict=True)]
    options: dict[str, object] = {"save_all": True, "append_images": imgs[1:]}
    if fmt == "WEBP":
        options |= {"quality": quality, "lossless": quality == 100}
    if fmt in ("WEBP", "PNG") and pages.durations is not None:
        options |= {"duration": list(pages.durations), "loop": pages.loop or 0}
        if fmt == "WEBP":  # an animation's frames are all of one mode
            mode = "RGBA" if any(i.mode in ("RGBA", "LA") for i in imgs) else "RGB"
            imgs = [i.convert(mode) for i in imgs]
            options["append_images"] = imgs[1:]
    _keep_icc(options, imgs[0], pages.formats[0], fmt)
    _save(path, imgs[0], fmt, options)
    log.debug("wrote %s (%d frames, %s)", path, len(frames), fmt)


def _keep_icc(
    options: dict[str, object], img: Image.Image, like: PixelFormat | None, fmt: str
) -> None:
    """Write the input's ICC profile where the format holds one and the image is still of
    the profile's kind (a grey profile on a grey image, a colour one on a colour image)."""
    if like is None or not like.icc or fmt == "BMP":
        return
    if (img.mode in ("L", "LA", "I;16")) == like.grey:
        options["icc_profile"] = like.icc


def _save(path: Path, img: Image.Image, fmt: str, options: dict[str, object]) -> None:
    """Save ``img`` (with ``options``) to a temporary file beside ``path``, then rename."""
    tmp = tmp_beside(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp, format=fmt, **options)
        tmp.replace(path)
    except (OSError, ValueError) as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(path, f"cannot write the image ({e})") from e


def _like(rgb: np.ndarray, like: PixelFormat, fmt: str, path: Path) -> Image.Image:
    """``rgb`` as a Pillow image in the input's own format, as far as ``fmt`` holds it."""
    hw = rgb.shape[:2]
    for name, arr in (("alpha", like.alpha), ("deep", like.deep)):
        if arr is not None and arr.shape != hw:
            raise ShapeError(f"like.{name}", arr.shape, f"{hw} as the image")
    rgb = np.ascontiguousarray(rgb)
    grey = like.grey and bool((rgb[:, :, 0] == rgb[:, :, 1]).all())
    grey = grey and bool((rgb[:, :, 1] == rgb[:, :, 2]).all())
    if like.grey and not grey:
        log.warning("%s: a greyscale input written in colour (its pixels are not grey)", path)
    if grey and like.deep is not None and fmt in _DEEP_FORMATS:
        g8 = rgb[:, :, 0]
        kept = g8 == like.deep // 257  # as read: the pixel keeps its 16 bits
        img = Image.fromarray(np.where(kept, like.deep, g8.astype(np.uint16) * 257))
        if like.alpha is not None:  # Pillow writes no 16-bit grey with alpha
            log.warning("%s: the alpha channel is not kept (16-bit greyscale)", path)
        return img
    if like.deep is not None:
        log.warning("%s: a 16-bit input written with 8 bits (%s holds no 16-bit grey)", path, fmt)
    img = Image.fromarray(np.ascontiguousarray(rgb[:, :, 0]) if grey else rgb)
    if like.alpha is not None:
        if fmt in _ALPHA_FORMATS:
            img.putalpha(Image.fromarray(like.alpha))
            if fmt == "WEBP" and img.mode == "LA":
                img = img.convert("RGBA")
        else:
            log.warning("%s: the alpha channel is not kept (%s holds none)", path, fmt)
    return img


def classify_input(path: Path | str) -> Literal["video", "image", "folder"]:
    """Say what kind of input a path is, from its type and suffix (case-insensitive).

    Raises:
        InputError: the path does not exist or its suffix is neither a video nor an image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist; expected a video, an image or a folder")
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTS:
        return "video"
    if suffix in IMAGE_EXTS:
        return "image"
    raise InputError(
        path,
        f"unsupported file type {suffix or '(no suffix)'}; expected a folder, a video "
        f"({_exts(VIDEO_EXTS)}) or an image ({_exts(IMAGE_EXTS)})",
    )


def _hidden(name: str) -> bool:
    return name.startswith(".")


def list_images(folder: Path | str) -> list[Path]:
    """All image files under ``folder``, recursively, sorted by relative path.

    Hidden files and folders (name starting with ``.``) are skipped, as is anything whose
    suffix (case-insensitive) is not in :data:`IMAGE_EXTS`. Symlinked folders are not
    followed.

    Raises:
        InputError: ``folder`` is not an existing folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "expected an existing folder of images")
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        for name in files:
            if not _hidden(name) and Path(name).suffix.lower() in IMAGE_EXTS:
                found.append(Path(root) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def check_output_kind(kind: Literal["video", "image", "folder"], output: Path | str) -> None:
    """Refuse an output path that cannot hold its input's kind: a video's output needs a
    suffix H.264 can be written to (.mp4, .m4v, .mov, .mkv), an image's one of
    :data:`IMAGE_EXTS`. Where it may go is :func:`deid.io.paths.check_writes`' business.

    Raises:
        OutputError: naming the suffixes expected.
    """
    if kind == "folder":
        return
    dst = Path(output)
    allowed = set(WRITABLE_VIDEO_FORMATS) if kind == "video" else IMAGE_EXTS
    if dst.suffix.lower() not in allowed:
        raise OutputError(
            dst, f"unsupported output suffix for a {kind}; expected one of {_exts(allowed)}"
        )


def _check_frames_fit(input: Path, output: Path) -> None:
    """Refuse a multi-page TIFF or an animated WebP or PNG whose output format holds one
    frame (JPEG, BMP): its other frames would be lost. (An MPO JPEG's extra frames, a
    camera's preview, are dropped with a warning.)"""
    fmt_in = _PIL_FORMATS.get(input.suffix.lower())
    fmt_out = _PIL_FORMATS.get(output.suffix.lower())
    if fmt_in in _MULTI_FORMATS and fmt_out not in _MULTI_FORMATS and input.is_file():
        n = count_frames(input)
        if n > 1:
            raise OutputError(
                output,
                f"{input.name} holds {n} frames (pages or an animation) and {fmt_out} holds "
                "one; expected an output suffix of .png, .tif, .tiff or .webp",
            )


def check_run(
    input: Path | str,
    output: Path | str,
    contact_sheet: Path | str | None = None,
    extra: Sequence[Artefact] = (),
    probe: bool = True,
) -> Literal["video", "image", "folder"]:
    """Refuse a run (``deid run``, a service job) before any work: an input that is not a
    video, image or folder; any clash of what the run writes (the output, its report, the
    contact sheet, ``extra``) with its input or with each other
    (:func:`deid.io.paths.check_writes`; a folder's output mirrors the input tree, so nothing
    else may go inside it); an output suffix that does not fit the input; a contact sheet
    not named ``.png``. Returns the input's kind.

    Raises:
        InputError, OutputError: naming what was expected.
    """
    input, output = Path(input), Path(output)
    kind = classify_input(input)
    sheet = None if contact_sheet is None else Artefact("contact sheet", Path(contact_sheet))
    writes = [
        Artefact("output", output, folder=kind == "folder"),
        Artefact("report", report_path(output)),
        sheet,
        *extra,
    ]
    check_writes([("input", input)], writes, probe=probe)
    check_output_kind(kind, output)
    if kind == "image":
        _check_frames_fit(input, output)
    if sheet is not None and sheet.path.suffix.lower() != ".png":
        raise OutputError(sheet.path, "the contact sheet is a PNG; expected a .png path")
    return kind
