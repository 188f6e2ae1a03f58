"""Dataset batches: de-identify a tree of images and videos, resumably, with a manifest.

``deid batch INPUT_DIR -o OUTPUT_DIR`` walks ``INPUT_DIR`` (hidden entries skipped), writes
each image and video to the same relative path under ``OUTPUT_DIR`` and keeps one row per
file in ``OUTPUT_DIR/manifest.csv``. Models load once per batch. A second run skips every
file whose manifest row says it was done for the same input (size and mtime, else the
SHA-256) and whose output still verifies (decodes, same size or frame count); everything
else is (re)done. A file that fails is a ``failed`` row with the reason and the batch goes
on; the command then exits with :class:`deid.errors.PartialFailure`'s code (3).

:func:`process_file` is the unit of work (one file in, one manifest row out); the service
shards dataset jobs over it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deid.argtypes import SETTING_FLAGS, add_setting_flags, setting_overrides
from deid.errors import DeidError, InputError, OutputError, PartialFailure

# deid.io (PyAV, OpenCV) and the models load on first use, so that `deid --help` stays quick.
if TYPE_CHECKING:
    from deid.pipeline import Resources

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"

# Column order of manifest.csv (every row of process_file has these keys).
FIELDS = [
    "path",
    "kind",
    "status",
    "faces",
    "deidentified",
    "obscured",
    "error",
    "seconds",
    "input_size",
    "input_mtime_ns",
    "input_sha256",
    "output",
    "width",
    "height",
    "frames",
]

STATUSES = ("done", "failed", "skipped")


def kind_of(path: Path) -> str | None:
    """``image``, ``video`` or ``None`` (not a media file) from the suffix (case-insensitive)."""
    from deid.io import IMAGE_EXTS, VIDEO_EXTS

    s = path.suffix.lower()
    if s in IMAGE_EXTS:
        return "image"
    if s in VIDEO_EXTS:
        return "video"
    return None


def output_path(rel: Path) -> Path:
    """The output's relative path for an input's relative path: the same, except that videos
    in containers H.264 cannot be written to (``.avi``, ``.webm``, ...) become ``.mp4``."""
    from deid.io import WRITABLE_VIDEO_FORMATS

    if kind_of(rel) == "video" and rel.suffix.lower() not in WRITABLE_VIDEO_FORMATS:
        return rel.with_suffix(".mp4")
    return rel


def list_media(root: Path) -> list[Path]:
    """Image and video files under ``root`` (recursive, sorted, hidden entries skipped)."""
    if not root.is_dir():
        raise InputError(root, "expected an existing folder of images and videos")
    found: list[Path] = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            p = Path(dirpath) / name
            if not name.startswith(".") and kind_of(p) is not None:
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _input_fields(src: Path) -> dict[str, Any]:
    st = src.stat()
    return {
        "input_size": st.st_size,
        "input_mtime_ns": st.st_mtime_ns,
        "input_sha256": sha256(src),
    }


def _empty_row(src: Path, dst: Path) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(FIELDS, "")
    row.update(path=str(src), output=str(dst), kind=kind_of(src) or "", faces=0)
    row.update(deidentified=0, obscured=0, seconds=0.0)
    return row


def failed_row(src: Path, dst: Path, reason: str) -> dict[str, Any]:
    """The manifest row of a file refused before it was read (as :func:`process_file` gives
    for a file that failed)."""
    return {**_empty_row(src, dst), "status": "failed", "error": reason}


def _count(records: Iterable[dict[str, Any]]) -> tuple[int, int, int]:
    """(faces, de-identified, obscured): a face is de-identified when its final action (after
    verification and repair) is the attack; anything else (pixelated, blurred, ...) is
    obscured."""
    recs = list(records)
    attacked = sum(1 for r in recs if r.get("action") == "attacked")
    return len(recs), attacked, len(recs) - attacked


def process_file(src: Path, dst: Path, res: Resources) -> dict[str, Any]:
    """De-identify one image or video file ``src`` into ``dst``; return its manifest row.

    The output is written atomically (a temporary file beside ``dst``, renamed when
    complete); a video's JSON report goes beside it (``out.mp4`` -> ``out.report.json``).
    Never raises for a bad input: a file that cannot be read or processed gives a row with
    ``status="failed"`` and the reason in ``error`` (and nothing new written at ``dst``).

    Args:
        src: an image (:data:`deid.io.IMAGE_EXTS`) or video (:data:`deid.io.VIDEO_EXTS`) file.
        dst: the output file; images keep their format, videos must end in .mp4, .m4v, .mov
            or .mkv (see :func:`output_path`). Missing parent folders are created.
        res: models and settings, loaded once (:meth:`deid.pipeline.Resources.load`).

    Returns:
        one row with the keys of :data:`FIELDS`: ``path`` (``str(src)``), ``kind``,
        ``status`` (``done`` or ``failed``), ``faces``, ``deidentified`` (faces whose attack
        held, also on the written file), ``obscured`` (faces pixelated/blurred instead),
        ``error``, ``seconds``, the input's ``input_size``, ``input_mtime_ns`` and
        ``input_sha256``, ``output`` (``str(dst)``), and the output's ``width``, ``height``
        and ``frames``.
    """
    from deid.io import IMAGE_EXTS, VIDEO_EXTS

    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    row = _empty_row(src, dst)
    try:
        kind = kind_of(src)
        if kind is None:
            raise InputError(
                src,
                f"unsupported file type {src.suffix or '(no suffix)'}; expected an image "
                f"({', '.join(sorted(IMAGE_EXTS))}) or a video ({', '.join(sorted(VIDEO_EXTS))})",
            )
        if not src.is_file():
            raise InputError(src, "file not found; expected an image or a video file")
        row.update(_input_fields(src))
        dst.parent.mkdir(parents=True, exist_ok=True)
        if kind == "image":
            row.update(_process_image(src, dst, res))
        else:
            row.update(_process_video(src, dst, res))
        row["status"] = "done"
    except DeidError as e:
        row.update(status="failed", error=_reason(e))
    except Exception as e:  # one bad file must not stop a batch; the row says what happened
        log.warning("%s failed", src, exc_info=True)
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _reason(e: DeidError) -> str:
    return getattr(e, "reason", None) or str(e)


def _process_image(src: Path, dst: Path, res: Resources) -> dict[str, Any]:
    from deid.io import IMAGE_EXTS, read_image
    from deid.pipeline import Timer, new_state, process_image

    if dst.suffix.lower() not in IMAGE_EXTS:
        raise OutputError(dst, f"expected an image output ({', '.join(sorted(IMAGE_EXTS))})")
    recs = process_image(src, dst, res, new_state(res.settings), Timer())
    h, w = read_image(dst).shape[:2]  # the written file decodes
    faces, ok, obscured = _count(r.wire() for r in recs)
    return {"faces": faces, "deidentified": ok, "obscured": obscured, "width": w, "height": h}


def _process_video(src: Path, dst: Path, res: Resources) -> dict[str, Any]:
    from deid.io import probe_video
    from deid.pipeline import run

    report = run(src, dst, res.settings, progress=False, resources=res)
    info = probe_video(dst)
    faces, ok, obscured = _count(report.get("faces_detail", []))
    return {
        "faces": faces,
        "deidentified": ok,
        "obscured": obscured,
        "width": info.width,
        "height": info.height,
        "frames": info.frame_count,
    }


# --------------------------------------------------------------------------------------------
# resuming
# --------------------------------------------------------------------------------------------
def read_manifest(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a manifest CSV by ``path`` (empty if the file does not exist)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f) if r.get("path")}


def write_manifest(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write the manifest atomically (rows sorted by path).

    Raises:
        OutputError: it cannot be written (naming ``path``).
    """
    from deid.io import tmp_beside, writing

    tmp = tmp_beside(path)
    try:
        with writing(path, "manifest"):
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
                w.writeheader()
                for r in sorted(rows, key=lambda r: str(r["path"])):
                    w.writerow(r)
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def same_input(src: Path, row: dict[str, Any]) -> bool:
    """Whether ``src`` is the file a manifest row was made from: same size and mtime, or
    (when only the mtime changed) the same SHA-256."""
    try:
        st = src.stat()
    except OSError:
        return False
    if _int(row.get("input_size")) != st.st_size:
        return False
    if _int(row.get("input_mtime_ns")) == st.st_mtime_ns:
        return True
    return bool(row.get("input_sha256")) and sha256(src) == row["input_sha256"]


def output_verifies(dst: Path, row: dict[str, Any]) -> bool:
    """Whether the output exists, decodes and has the size (and frame count) the row says."""
    from deid.io import probe_video, read_image

    if not dst.is_file():
        return False
    try:
        if row.get("kind") == "video":
            info = probe_video(dst)
            got = (info.width, info.height, info.frame_count)
            want = (_int(row.get("width")), _int(row.get("height")), _int(row.get("frames")))
            return got == want
        h, w = read_image(dst).shape[:2]
        return (w, h) == (_int(row.get("width")), _int(row.get("height")))
    except DeidError:
        return False


def is_done(src: Path, dst: Path, row: dict[str, Any] | None) -> bool:
    """Whether a file can be skipped: its row says done (or skipped) for this very input and
    the output still verifies."""
    return (
        row is not None
        and row.get("status") in ("done", "skipped")
        and same_input(src, row)
        and output_verifies(dst, row)
    )


# --------------------------------------------------------------------------------------------
# the batch
# --------------------------------------------------------------------------------------------
def check_dirs(input_dir: Path, output_dir: Path) -> None:
    """Refuse a missing input folder, and an output folder that is a file, cannot be written,
    or is, holds or lies inside the input folder (:func:`deid.io.check_writes`; the manifest
    and the videos' reports are inside the output folder).

    Raises:
        InputError, OutputError: naming what was expected.
    """
    from deid.io import Artefact, check_writes

    if not input_dir.is_dir():
        raise InputError(input_dir, "expected an existing folder of images and videos")
    check_writes([("input", input_dir)], [Artefact("output", output_dir, folder=True)])


def run_batch(
    input_dir: Path | str,
    output_dir: Path | str,
    res: Resources,
    progress: bool = True,
    force: bool = False,
    flush_seconds: float = 5.0,
) -> dict[str, Any]:
    """De-identify every image and video under ``input_dir`` into ``output_dir``.

    Returns a summary (``files``, ``done``, ``skipped``, ``failed``, ``faces``, ``manifest``,
    ``failures``: [(path, reason)]). Never raises for a bad file; the caller decides what a
    partial failure means (the CLI raises :class:`PartialFailure`).

    Args:
        force: reprocess files the manifest says are done.
        flush_seconds: the manifest is rewritten at most this often while the batch runs
            (and always at the end), so an interrupted batch resumes where it stopped.

    Raises:
        InputError: ``input_dir`` is not a folder.
        OutputError: ``output_dir`` is, holds or lies inside ``input_dir``, is an existing
            file, or cannot be written.
    """
    from tqdm.auto import tqdm

    from deid.io import writing

    src_root, dst_root = Path(input_dir), Path(output_dir)
    check_dirs(src_root, dst_root)
    files = list_media(src_root)
    with writing(dst_root):
        dst_root.mkdir(parents=True, exist_ok=True)
    manifest = dst_root / MANIFEST
    previous = read_manifest(manifest)
    rows: dict[str, dict[str, Any]] = {}  # this tree's files only: rows of deleted inputs go
    counts = dict.fromkeys(STATUSES, 0)
    faces = 0
    last_flush = time.monotonic()
    bar = tqdm(files, desc=f"deid batch {src_root.name}", unit="file", disable=not progress)
    # output path -> the input that writes it: an input of the same name first (clip.mp4 wins
    # over clip.avi, whose output would be clip.mp4), else the first in order
    owner: dict[str, str] = {}
    for src in sorted(files, key=lambda p: output_path(p) != p):
        rel = src.relative_to(src_root)
        owner.setdefault(output_path(rel).as_posix(), rel.as_posix())
    for src in bar:
        rel = src.relative_to(src_root)
        key = rel.as_posix()
        out_rel = output_path(rel)
        dst = dst_root / out_rel
        prev = previous.get(key)
        first = owner[out_rel.as_posix()]
        if first != key:  # clip.avi and clip.mp4 would both write clip.mp4
            row = _empty_row(src, dst)
            row.update(
                status="failed",
                error=f"its output {out_rel.as_posix()} is already written for {first}; "
                "expected one input per output path (rename one of them)",
            )
        elif not force and is_done(src, dst, prev):
            row = {**prev, "status": "skipped", "seconds": 0.0}  # type: ignore[dict-item]
        else:
            row = process_file(src, dst, res)
            if row["status"] == "failed":
                with contextlib.suppress(OSError):  # no stale output of an earlier run
                    dst.unlink(missing_ok=True)
        row["path"], row["output"] = key, out_rel.as_posix()
        rows[key] = row
        counts[row["status"]] += 1
        faces += _int(row.get("faces")) or 0
        bar.set_postfix(done=counts["done"], skipped=counts["skipped"], failed=counts["failed"])
        if time.monotonic() - last_flush >= flush_seconds:
            write_manifest(manifest, rows.values())
            last_flush = time.monotonic()
    bar.close()
    write_manifest(manifest, rows.values())
    failures = [(k, str(r["error"])) for k, r in rows.items() if r["status"] == "failed"]
    return {
        "input": str(src_root),
        "output": str(dst_root),
        "files": len(files),
        **counts,
        "faces": faces,
        "manifest": str(manifest),
        "failures": failures,
    }


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    """``deid batch INPUT_DIR -o OUTPUT_DIR [--config ...]``."""
    p = sub.add_parser(
        "batch",
        help="de-identify a tree of images and videos (resumable, with a manifest CSV)",
        description="De-identify every image and video under INPUT_DIR into the same relative "
        "paths under OUTPUT_DIR, with one row per file in OUTPUT_DIR/manifest.csv. Rerunning "
        "skips files already done (same input, output still decodes); a failed file is a "
        "'failed' row and the batch goes on (exit code 3 at the end).",
    )
    p.add_argument("input", type=Path, help="folder of images and videos (recursive)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (mirrors it)")
    p.add_argument(
        "--config", help="YAML file or a name in configs/ (default: configs/default.yaml)"
    )
    add_setting_flags(p, "--classifier", "--attack", "--device", "--workers")
    p.add_argument("--force", action="store_true", help="redo files the manifest says are done")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    import json
    import sys

    from deid.config import load_settings
    from deid.pipeline import Resources

    check_dirs(args.input, args.output)  # before the models load
    settings = load_settings(args.config, setting_overrides(args), flags=SETTING_FLAGS)
    res = Resources.load(settings)
    summary = run_batch(args.input, args.output, res, progress=not args.quiet, force=args.force)
    sys.stdout.write(json.dumps({k: v for k, v in summary.items() if k != "failures"}) + "\n")
    if summary["failures"]:
        raise PartialFailure(summary["failures"])
    return 0
