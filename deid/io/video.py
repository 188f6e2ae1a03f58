"""Video probing, decoding and atomic H.264 writing (PyAV, with an OpenCV read fallback).

Frames are always ``(H, W, 3) uint8 RGB`` numpy arrays, stored as decoded: a rotation in
the container's display matrix is reported by :func:`probe_video` and applied only where
asked (:func:`upright`, ``read_frames(..., upright=True)``; a phone's portrait video is stored
sideways, and a detector looks for faces the right way up).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import cv2
import numpy as np

from deid.errors import InputError, OutputError, ShapeError, VideoDecodeError
from deid.io.paths import tmp_beside

log = logging.getLogger(__name__)

EXPECTED_VIDEO = "expected a video file (mp4, mov, avi, mkv, ...)"

# Output suffix -> FFmpeg muxer. Only containers that hold H.264 well.
WRITABLE_VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}

# Demuxers that open still images; PyAV happily reports them as a one-frame "video".
_IMAGE_DEMUXERS = {"image2", "gif", "apng"}

# Errors PyAV raises for unreadable or undecodable data (FFmpegError covers av.error.*).
_AV_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found out about a video file.

    Attributes:
        width: frame width in pixels, as decoded (before any display rotation).
        height: frame height in pixels, as decoded.
        fps: average frame rate (frames per second) of the video stream.
        frame_count: exact number of frames in the video stream.
        duration: duration of the video stream in seconds.
        codec: decoder name of the video stream, e.g. ``"h264"``.
        has_audio: whether the file has at least one audio stream.
        rotation: display rotation in degrees counter-clockwise (0, 90, 180 or 270 for
            real footage), from the display matrix or the legacy ``rotate`` tag; 0 if absent.
        rate: ``fps`` as an exact fraction (e.g. ``30000/1001``); pass it to
            :class:`VideoWriter` to keep the rate exactly.
        colour: (matrix, primaries, transfer) as FFmpeg numbers them (``AVCOL_SPC``,
            ``AVCOL_PRI``, ``AVCOL_TRC``: 1 BT.709, 6 SMPTE 170M, 9 BT.2020, transfer 16 PQ,
            18 HLG; 2 unspecified); pass it to :class:`VideoWriter` to keep them.
        sample_aspect: the shape of a pixel (width / height) where it is not square, as
            anamorphic footage has (720x540 stored, 4:3 pixels, shown 16:9); None: square
            or untagged. Pass it to :class:`VideoWriter` to keep it.
        interlaced: ``"tff"`` or ``"bff"`` (top or bottom field first) for interlaced video
            (broadcast 1080i: each frame's two fields are 1/50 s apart), None for
            progressive. Pass it to :class:`VideoWriter` to keep it.
    """

    width: int
    height: int
    fps: float
    frame_count: int
    duration: float
    codec: str
    has_audio: bool
    rotation: int = 0
    rate: Fraction = Fraction(0)
    colour: tuple[int, int, int] = (2, 2, 2)
    sample_aspect: Fraction | None = None
    interlaced: str | None = None


def _interlaced(stream: Any, first: Any) -> str | None:
    """``"tff"`` / ``"bff"`` for interlaced video (its first frame or its field order says
    so), None for progressive. FFmpeg's field orders: 2 TT, 3 BB, 4 TB, 5 BT."""
    order = int(getattr(stream.codec_context, "field_order", 0) or 0)
    if not (getattr(first, "interlaced_frame", False) or order in (2, 3, 4, 5)):
        return None
    return "bff" if order in (3, 5) else "tff"


def field_frame(frame: np.ndarray) -> np.ndarray:
    """An interlaced frame as its top field alone, the other field's lines the mean of
    their neighbours ("bob"). Moving faces in a woven frame are combed (each field is a
    moment apart) and a detector misses some; in the field they are whole."""
    out = frame.copy()
    if frame.shape[0] >= 3:
        above, below = frame[0:-2:2].astype(np.uint16), frame[2::2].astype(np.uint16)
        n = min(len(above), len(below), len(out[1:-1:2]))
        out[1 : 1 + 2 * n : 2] = ((above[:n] + below[:n] + 1) // 2).astype(np.uint8)
    return out


def sample_aspect_of(stream: Any) -> Fraction | None:
    """A stream's sample (pixel) aspect ratio where it is set and not square."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar is not None and sar.numerator > 0 and sar.denominator > 0 and sar != 1:
            return Fraction(sar.numerator, sar.denominator)
    return None


def to_rate(fps: float | Fraction) -> Fraction:
    """Turn a frame rate into the exact fraction a container stores.

    Integer rates stay integers (``25 -> 25/1``), NTSC rates snap to their ``/1001`` form
    (``29.97 -> 30000/1001``, ``23.976 -> 24000/1001``), anything else is the closest
    fraction with a denominator of at most 1001.

    Raises:
        ValueError: ``fps`` is not a positive finite number.
    """
    if isinstance(fps, Fraction):
        rate = fps
    else:
        if not np.isfinite(fps):
            raise ValueError(f"fps: expected a positive finite number, got {fps}")
        rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps: expected a positive number, got {fps}")
    if rate.denominator != 1:
        ntsc = Fraction(round(float(rate) * 1.001) * 1000, 1001)
        if abs(float(rate) - float(ntsc)) < 1e-3:
            return ntsc
    return rate


def _check_video_path(path: Path) -> None:
    if not path.exists():
        raise InputError(path, f"file not found; {EXPECTED_VIDEO}")
    if not path.is_file():
        raise InputError(path, f"is not a regular file; {EXPECTED_VIDEO}")


def _open_av(path: Path) -> tuple[Any, Any]:
    """Open ``path`` with PyAV and return ``(container, video_stream)``.

    Raises:
        VideoDecodeError: the file opens but is a still image or has no video stream.
        av.FFmpegError, OSError: PyAV cannot open the file at all (caller may fall back).
    """
    container = av.open(str(path), mode="r")
    try:
        fmt = container.format.name
        if fmt in _IMAGE_DEMUXERS or fmt.endswith("_pipe"):
            raise VideoDecodeError(path, f"is a still image ({fmt}); {EXPECTED_VIDEO}")
        if not container.streams.video:
            raise VideoDecodeError(path, f"has no video stream; {EXPECTED_VIDEO}")
        return container, container.streams.video[0]
    except BaseException:
        container.close()
        raise


def _stream_rate(stream: Any) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _is_flush(packet: Any) -> bool:
    """PyAV's demux ends each stream with an empty packet that only flushes the decoder."""
    return packet.size == 0 and packet.dts is None


def _count_packets(path: Path) -> int:
    """Number of video packets (= frames) in a file, by demuxing it without decoding."""
    try:
        with av.open(str(path), mode="r") as container:
            stream = container.streams.video[0]
            return sum(not _is_flush(p) for p in container.demux(stream))
    except _AV_ERRORS as e:
        raise VideoDecodeError(path, f"cannot demux the video to count its frames ({e})") from e


def _rotation(stream: Any, first_frame: Any) -> int:
    tag = stream.metadata.get("rotate")
    if tag is not None:
        with contextlib.suppress(ValueError):
            return (-round(float(tag))) % 360  # legacy tag is clockwise
    return round(float(getattr(first_frame, "rotation", 0) or 0)) % 360


def display_rotation(path: Path) -> int:
    """A video file's display rotation (:attr:`VideoInfo.rotation`) from its first frame
    alone (:func:`probe_video` also counts the frames, which takes a demux of the whole file
    where the container does not say); 0 if it cannot be read."""
    try:
        container, stream = _open_av(path)
    except (VideoDecodeError, *_AV_ERRORS):
        return 0
    try:
        first = next(container.decode(stream), None)
        return 0 if first is None else _rotation(stream, first)
    except _AV_ERRORS:
        return 0
    finally:
        container.close()


def _colour(stream: Any, first: Any) -> tuple[int, int, int]:
    """(matrix, primaries, transfer) of a stream: its decoder's, else its first frame's."""
    ctx = stream.codec_context
    out = []
    for name, frame_name in (
        ("colorspace", "colorspace"),
        ("color_primaries", "color_primaries"),
        ("color_trc", "color_trc"),
    ):
        v = int(getattr(ctx, name, 2) or 2)
        if v == 2:
            v = int(getattr(first, frame_name, 2) or 2)
        out.append(v)
    return (out[0], out[1], out[2])


def probe_video(path: Path | str) -> VideoInfo:
    """Read a video's size, rate, exact frame count, codec, audio and rotation.

    The frame count is the container's if it records one (mp4, mov, avi), else the number
    of video packets found by demuxing the whole file (mkv, webm, ts). The first frame is
    decoded, so a file that does not decode is rejected here.

    Raises:
        InputError: the path does not exist or is not a regular file.
        VideoDecodeError: the file is not a decodable video (text, image, no video stream).
    """
    path = Path(path)
    _check_video_path(path)
    try:
        container, stream = _open_av(path)
    except VideoDecodeError:
        raise
    except _AV_ERRORS as e:
        log.debug("PyAV cannot open %s (%s); trying OpenCV", path, e)
        return _probe_cv2(path, e)
    try:
        _check_matroska_size(path, container)
        rate = _stream_rate(stream)
        if rate is None:
            raise VideoDecodeError(path, f"video stream has no frame rate; {EXPECTED_VIDEO}")
        try:
            first = next(container.decode(stream), None)
        except _AV_ERRORS as e:
            raise VideoDecodeError(
                path, f"cannot decode the first frame ({e}); {EXPECTED_VIDEO}"
            ) from e
        if first is None:
            raise VideoDecodeError(path, f"video stream has no frames; {EXPECTED_VIDEO}")
        rotation = _rotation(stream, first)
        frame_count = stream.frames
        if frame_count <= 0:
            frame_count = _count_packets(path)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None and len(container.streams) == 1:
            duration = container.duration / av.time_base
        else:
            duration = frame_count / float(rate)
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate),
            frame_count=int(frame_count),
            duration=duration,
            codec=stream.codec_context.name,
            has_audio=bool(container.streams.audio),
            rotation=rotation,
            rate=rate,
            colour=_colour(stream, first),
            sample_aspect=sample_aspect_of(stream),
            interlaced=_interlaced(stream, first),
        )
    finally:
        container.close()


def _open_cv2(path: Path, av_error: BaseException) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)  # frames as stored, as PyAV gives them
    if not cap.isOpened():
        cap.release()
        raise VideoDecodeError(path, f"cannot open ({av_error}); {EXPECTED_VIDEO}") from av_error
    return cap


def _probe_cv2(path: Path, av_error: BaseException) -> VideoInfo:
    cap = _open_cv2(path, av_error)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        frame_count = 0
        while cap.grab():  # exact count: CAP_PROP_FRAME_COUNT is an estimate
            frame_count += 1
    finally:
        cap.release()
    if frame_count == 0 or fps <= 0 or width <= 0:
        raise VideoDecodeError(path, f"OpenCV decodes no frames; {EXPECTED_VIDEO}")
    rate = to_rate(fps)
    codec = "".join(chr((fourcc >> 8 * i) & 0xFF) for i in range(4)).strip("\x00 ").lower()
    return VideoInfo(
        width=width,
        height=height,
        fps=float(rate),
        frame_count=frame_count,
        duration=frame_count / float(rate),
        codec=codec or "unknown",
        has_audio=False,  # OpenCV does not see audio
        rotation=0,
        rate=rate,
    )


def _ebml_vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    """Decode an EBML variable-length integer at ``pos``; return (value, next position).

    Returns value -1 for the reserved all-ones "unknown size".
    """
    first = data[pos]
    length = 9 - first.bit_length()  # leading zeros + 1
    if not 1 <= length <= 8 or pos + length > len(data):
        raise ValueError("bad EBML variable-length integer")
    value = int.from_bytes(data[pos : pos + length], "big")
    if keep_marker:
        return value, pos + length
    value &= (1 << (7 * length)) - 1
    return (-1 if value == (1 << (7 * length)) - 1 else value), pos + length


def _check_matroska_size(path: Path, container: Any) -> None:
    """Raise if a Matroska/WebM file is shorter than its Segment element says.

    Matroska records no frame count, so this is how a cut-off mkv is caught up front.
    """
    if not container.format.name.startswith("matroska"):
        return
    with path.open("rb") as f:
        head = f.read(4096)
    try:
        ebml_id, pos = _ebml_vint(head, 0, keep_marker=True)
        size, pos = _ebml_vint(head, pos, keep_marker=False)
        if ebml_id != 0x1A45DFA3 or size < 0:
            return
        segment_id, pos = _ebml_vint(head, pos + size, keep_marker=True)
        size, pos = _ebml_vint(head, pos, keep_marker=False)
    except (ValueError, IndexError):
        return
    if segment_id != 0x18538067 or size < 0:  # unknown size: live/streamed file
        return
    actual = path.stat().st_size
    if actual < pos + size:
        raise VideoDecodeError(
            path,
            f"file has {actual} bytes but its Matroska segment needs {pos + size}; it is truncated",
        )


def _expected_duration(container: Any, stream: Any) -> float | None:
    """Seconds the video stream claims to last, when the container records it."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")  # matroska writes one per stream: HH:MM:SS.nnnnnnnnn
    if tag:
        with contextlib.suppress(ValueError):
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


# Planar YUV with subsampled chroma -> 4:4:4 of the same depth and range. FFmpeg's swscale
# converts 4:2:0 straight to RGB on a fast path that truncates: frames of the pedestrian clip
# encoded by deid's own writer read back 0.9-1.3 grey levels darker than they were written,
# mean error 1.29 (10-bit 4:2:0: 1.8-2.0 darker, error 1.97), so every pass through deid
# darkened the footage; upsampling the chroma first and converting that to RGB leaves
# -0.2..+0.1 and 0.65 (10-bit: 0.01 and 0.39; tests/test_io.py)
_FULL_CHROMA = {
    "yuv420p": "yuv444p",
    "yuv422p": "yuv444p",
    "yuv411p": "yuv444p",
    "yuv440p": "yuv444p",
    "nv12": "yuv444p",
    "nv21": "yuv444p",
    "yuvj420p": "yuvj444p",
    "yuvj422p": "yuvj444p",
    "yuvj411p": "yuvj444p",
    "yuvj440p": "yuvj444p",
    "yuv420p10le": "yuv444p16le",
    "yuv422p10le": "yuv444p16le",
    "yuv420p12le": "yuv444p16le",
    "yuv422p12le": "yuv444p16le",
    "p010le": "yuv444p16le",
}


def frame_rgb(frame: Any) -> np.ndarray:
    """A decoded ``av.VideoFrame`` as (H, W, 3) uint8 RGB, in its own colorspace and range,
    subsampled chroma upsampled first (:data:`_FULL_CHROMA`)."""
    mid = _FULL_CHROMA.get(frame.format.name)
    if mid is not None:
        cs, rng = frame.colorspace, frame.color_range
        frame = frame.reformat(
            format=mid,
            src_colorspace=cs,
            dst_colorspace=cs,
            src_color_range=rng,
            dst_color_range=rng,
        )
        return np.ascontiguousarray(
            frame.reformat(format="rgb24", src_colorspace=cs, src_color_range=rng).to_ndarray()
        )
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))


def _quarter_turns(rotation: int) -> int:
    return round(rotation / 90) % 4


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """A stored frame as players show it: turned by its display ``rotation`` (degrees
    counter-clockwise, :attr:`VideoInfo.rotation`; to the nearest quarter turn)."""
    k = _quarter_turns(rotation)
    return np.ascontiguousarray(np.rot90(frame, k)) if k else frame


def as_stored(frame: np.ndarray, rotation: int) -> np.ndarray:
    """The inverse of :func:`upright`: an upright frame turned back to the stored
    orientation of a video whose display rotation is ``rotation``."""
    k = _quarter_turns(rotation)
    return np.ascontiguousarray(np.rot90(frame, -k)) if k else frame


def shown_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """(width, height) of a stored ``width`` x ``height`` frame as players show it."""
    return (height, width) if _quarter_turns(rotation) % 2 else (width, height)


def _iter_av(path: Path, container: Any, stream: Any) -> Iterator[np.ndarray]:
    """Decode every frame; raise if the file ends before the container says it should."""
    stream.thread_type = "AUTO"
    expected = stream.frames
    rate = _stream_rate(stream)
    claimed = _expected_duration(container, stream) if expected <= 0 else None
    packets = frames = 0
    last_end = 0.0
    try:
        try:
            for packet in container.demux(stream):
                if not _is_flush(packet):
                    packets += 1
                for frame in packet.decode():
                    frames += 1
                    if frame.pts is not None and frame.time_base is not None and rate:
                        last_end = max(last_end, float(frame.pts * frame.time_base + 1 / rate))
                    yield frame_rgb(frame)
        except _AV_ERRORS as e:
            raise VideoDecodeError(
                path,
                f"decoding failed after {frames} frame(s) ({e}); the file is truncated or corrupt",
            ) from e
        if frames == 0:
            raise VideoDecodeError(path, f"no frame could be decoded; {EXPECTED_VIDEO}")
        if expected > 0 and packets < expected:
            raise VideoDecodeError(
                path,
                f"file ends after {packets} of the {expected} frames its header lists; "
                "it is truncated",
            )
        if claimed is not None and rate and last_end < claimed - 1.5 / float(rate):
            raise VideoDecodeError(
                path,
                f"frames end at {last_end:.3f} s but the file claims {claimed:.3f} s; "
                "it is truncated",
            )
    finally:
        container.close()


_upright = upright  # read_frames' argument hides the function


def _iter_cv2(path: Path, cap: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """Decode with OpenCV; raise if it yields fewer frames than it reported."""
    reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    if frames == 0 or (reported > 0 and frames < reported):
        raise VideoDecodeError(
            path, f"OpenCV decoded {frames} of the {reported} frames the file reports"
        )


def read_frames(
    path: Path | str, batch_size: int | None = None, upright: bool = False
) -> Iterator[np.ndarray]:
    """Decode every frame of a video, in order.

    The file is opened (and rejected if unreadable) when this is called, not on the first
    ``next()``. PyAV is used; OpenCV only if PyAV cannot open the file.

    Args:
        path: a video file.
        batch_size: ``None`` to yield single frames; ``n`` to yield stacked batches of up to
            ``n`` frames (the last may be shorter).
        upright: turn each frame by the video's display rotation, as players show it
            (default: as stored).

    Yields:
        frames: (H, W, 3) uint8 RGB, or with ``batch_size`` (B, H, W, 3) uint8 RGB.

    Raises:
        InputError: the path does not exist.
        VideoDecodeError: the file is not a video, or (while iterating) decoding fails or the
            file ends before all frames its header lists were read (truncated file).
    """
    path = Path(path)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size: expected None or an int >= 1, got {batch_size}")
    _check_video_path(path)
    try:
        container, stream = _open_av(path)
    except VideoDecodeError:
        raise
    except _AV_ERRORS as e:
        cap = _open_cv2(path, e)
        log.warning("PyAV cannot open %s (%s); decoding with OpenCV", path, e)
        frames = _iter_cv2(path, cap)
    else:
        try:
            _check_matroska_size(path, container)
        except BaseException:
            container.close()
            raise
        frames = _iter_av(path, container, stream)
    if upright:
        rotation = probe_video(path).rotation
        if _quarter_turns(rotation):
            frames = (_upright(f, rotation) for f in frames)
    if batch_size is None:
        return frames
    return (np.stack(batch) for batch in iter_batches(frames, batch_size))


def iter_batches(iterator: Iterable[np.ndarray], n: int) -> Iterator[list[np.ndarray]]:
    """Group items into lists of ``n`` (the last list may be shorter, none is empty)."""
    if n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n}")
    batch: list[np.ndarray] = []
    for item in iterator:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


class _AudioCopier:
    """Copies (no re-encode) the audio packets of one file into an output container: every
    audio stream the output's format can hold (a commentary or second language track
    too), with its language and title tags."""

    def __init__(self, source: Path, output: Any) -> None:
        self.source = source
        self._input = av.open(str(source), mode="r")
        try:
            if not self._input.streams.audio:
                raise ValueError("it has no audio stream")
            self._out: dict[int, Any] = {}
            kept = []
            for in_stream in self._input.streams.audio:
                name = in_stream.codec_context.name
                if name not in output.supported_codecs:
                    log.warning(
                        "%s: audio stream %d (%s) not copied: %s cannot hold it",
                        source,
                        in_stream.index,
                        name,
                        output.format.name,
                    )
                    continue
                out_stream = output.add_stream_from_template(in_stream, opaque=True)
                for key in ("language", "title", "handler_name"):
                    if key in in_stream.metadata:
                        out_stream.metadata[key] = in_stream.metadata[key]
                self._out[in_stream.index] = out_stream
                kept.append(in_stream)
            if not kept:
                raise ValueError(f"{output.format.name} cannot hold any of its audio streams")
            self._packets = (p for p in self._input.demux(kept) if not _is_flush(p))
        except BaseException:
            self._input.close()
            raise
        self._output = output
        self._pending: Any = None
        self.copied = 0

    def copy_until(self, seconds: float | None) -> None:
        """Mux audio packets that start before ``seconds`` (all remaining if None)."""
        try:
            while True:
                if self._pending is None:
                    self._pending = next(self._packets, None)
                    if self._pending is None:
                        return
                p = self._pending
                ts = p.pts if p.pts is not None else p.dts
                if seconds is not None and ts is not None and float(ts * p.time_base) > seconds:
                    return
                p.stream = self._out[p.stream.index]
                self._output.mux(p)
                self._pending = None
                self.copied += 1
        except _AV_ERRORS as e:
            log.warning(
                "audio copy from %s stopped after %d packet(s): %s", self.source, self.copied, e
            )
            self._packets = iter(())
            self._pending = None

    def close(self) -> None:
        self._input.close()


# libx264 options under which the same frames always give the same bytes. With x264's
# macroblock-tree rate control on (its default), PyAV's bundled libx264 gave different
# bitstreams for the same frames and settings in about half of the processes that had
# torchvision loaded (any thread count; not with x264's assembly off), so a re-run chunk
# or a second worker could write other bytes. Without mbtree, 10 of 10 runs were identical.
REPRODUCIBLE_X264 = "mbtree=0"


# the matrices (AVCOL_SPC) FFmpeg's swscale converts RGB with: BT.709, FCC, BT.470BG,
# SMPTE 170M, SMPTE 240M, BT.2020 non-constant luminance
MATRICES = frozenset({1, 4, 5, 6, 7, 9})


class VideoWriter:
    """Encode RGB frames to an H.264 file, atomically.

    Frames go to ``.<name>.tmp-<random><suffix>`` beside ``path``; a clean :meth:`close` (or
    leaving the ``with`` block without an exception) renames it onto ``path`` with
    ``os.replace``. An exception inside the block, or :meth:`abort`, deletes it, so ``path``
    is either the complete new video or untouched.

    Colour: frames are converted with the BT.601 matrix, limited range, and the stream is
    tagged so (``smpte170m``), the same convention :func:`read_frames` decodes untagged
    video with; with ``colour`` (an input's :attr:`VideoInfo.colour`) whose matrix FFmpeg
    converts with (:data:`MATRICES`), with that matrix, and the stream tagged with the
    input's matrix, primaries and transfer, so that BT.709, BT.2020 and HLG or PQ footage
    shows as the input does (at 8 bits: a 10-bit input's depth is not kept). When
    ``pix_fmt`` is ``yuv420p`` and a dimension is odd, ``yuv444p`` is used instead so the
    size is kept exactly (4:4:4 H.264 does not play in browsers or
    QuickTime; players such as VLC and ffmpeg decode it).

    Args:
        path: output file, ``.mp4``, ``.m4v``, ``.mov`` or ``.mkv``. Missing parent folders
            are created.
        fps: frame rate; a float is snapped to an exact fraction by :func:`to_rate`.
        width: frame width in pixels.
        height: frame height in pixels.
        crf: libx264/libx265 constant rate factor (0 lossless, 18 visually lossless, 23
            default).
        codec: FFmpeg encoder name.
        pix_fmt: encoder pixel format.
        audio_from: a file whose audio streams are copied into the output; if it has
            none, or copying fails, a warning is logged and the output has no audio.
        preset: libx264/libx265 speed preset.
        rotation: display rotation (degrees counter-clockwise) to store, e.g.
            :attr:`VideoInfo.rotation` of the input so players show it the same way.
        time_base: with it, :meth:`write` takes each frame's ``pts`` in this time base (keep
            an input's timestamps, variable frame rate included); without it frames are
            spaced ``1 / fps`` apart.
        threads: encoder threads (``0``: FFmpeg's choice). Fix it where outputs must be
            byte-for-byte reproducible across machines (x264's output depends on it).
        x264_params: extra libx264 options (``key=value:key=value``), e.g. ``mbtree=0``
            where outputs must be byte-for-byte reproducible (see :data:`REPRODUCIBLE_X264`).
        colour: (matrix, primaries, transfer) to keep, as :attr:`VideoInfo.colour`.
        sample_aspect: the pixel shape to tag, as :attr:`VideoInfo.sample_aspect` (None:
            square).
        interlaced: ``"tff"`` / ``"bff"``: encode interlaced with that field order, as
            :attr:`VideoInfo.interlaced` (libx264 only; None: progressive).

    Attributes:
        frames_written: frames passed to :meth:`write` so far.
    """

    def __init__(
        self,
        path: Path | str,
        fps: float | Fraction,
        width: int,
        height: int,
        crf: int = 18,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        audio_from: Path | str | None = None,
        preset: str = "medium",
        rotation: int = 0,
        time_base: Fraction | None = None,
        threads: int = 0,
        x264_params: str | None = None,
        colour: Sequence[int] | None = None,
        sample_aspect: Fraction | None = None,
        interlaced: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.rate = to_rate(fps)
        self.time_base = Fraction(time_base) if time_base is not None else None
        self._last_pts: int | None = None
        if width < 1 or height < 1:
            raise ValueError(f"width, height: expected positive sizes, got {width}x{height}")
        self.width, self.height = int(width), int(height)
        fmt = WRITABLE_VIDEO_FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            raise OutputError(
                self.path, f"expected a video suffix in {sorted(WRITABLE_VIDEO_FORMATS)}"
            )
        if pix_fmt == "yuv420p" and (width % 2 or height % 2):
            log.info("%s: odd size %dx%d, encoding yuv444p to keep it", self.path, width, height)
            pix_fmt = "yuv444p"
        self.pix_fmt = pix_fmt
        # the RGB -> YUV matrix: BT.601 (as untagged video is decoded), or the input's
        self._matrix: str | int = "ITU601"
        if colour is not None and int(colour[0]) in MATRICES:
            self._matrix = int(colour[0])
        self.frames_written = 0
        self._closed = False
        self._audio: _AudioCopier | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(self.path, f"cannot create the output folder ({e})") from e
        self.tmp_path = tmp_beside(self.path)
        options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
        try:
            self._container = av.open(str(self.tmp_path), mode="w", format=fmt, options=options)
        except _AV_ERRORS as e:
            self.tmp_path.unlink(missing_ok=True)
            raise OutputError(self.path, f"cannot create {self.tmp_path.name} ({e})") from e
        try:
            self._stream = self._container.add_stream(codec, rate=self.rate)
            self._stream.width, self._stream.height = self.width, self.height
            self._stream.pix_fmt = pix_fmt
            ctx = self._stream.codec_context
            ctx.colorspace, ctx.color_range = 6, 1  # AVCOL_SPC_SMPTE170M (BT.601), MPEG range
            ctx.color_primaries, ctx.color_trc = 6, 6  # SMPTE170M
            if self._matrix != "ITU601":  # the input's own (colour)
                assert colour is not None
                ctx.colorspace, ctx.color_primaries, ctx.color_trc = (int(v) for v in colour)
            if self.time_base is not None:
                self._stream.time_base = self.time_base
                ctx.time_base = self.time_base
            if threads:
                ctx.thread_count = threads
            if codec in ("libx264", "libx265"):
                self._stream.options = {"crf": str(crf), "preset": preset}
                if interlaced in ("tff", "bff") and codec == "libx264":
                    field = f"{interlaced}=1"  # interlaced coding, that field first
                    x264_params = f"{x264_params}:{field}" if x264_params else field
                if x264_params and codec == "libx264":
                    self._stream.options = {**self._stream.options, "x264-params": x264_params}
            if rotation % 360:
                self._stream.set_display_rotation(rotation % 360)
            if sample_aspect is not None:
                ctx.sample_aspect_ratio = Fraction(sample_aspect)
        except _AV_ERRORS as e:
            self._discard()
            raise OutputError(self.path, f"cannot set up {codec} {pix_fmt} ({e})") from e
        except BaseException:
            self._discard()
            raise
        if audio_from is not None:
            try:
                self._audio = _AudioCopier(Path(audio_from), self._container)
            except _AV_ERRORS as e:
                log.warning(
                    "%s: writing without audio; cannot copy audio from %s: %s",
                    self.path,
                    audio_from,
                    e,
                )

    def write(self, frame: np.ndarray, pts: int | None = None) -> None:
        """Encode one frame.

        Args:
            frame: (H, W, 3) uint8 RGB with the writer's height and width.
            pts: presentation timestamp in ``time_base`` units (only with ``time_base``;
                increasing).

        Raises:
            ShapeError: the frame is not (height, width, 3).
            OutputError: the writer is closed or encoding fails.
        """
        if self._closed:
            raise OutputError(self.path, "write() after close(); expected an open VideoWriter")
        if frame.shape != (self.height, self.width, 3):
            raise ShapeError("frame", frame.shape, f"({self.height}, {self.width}, 3) RGB")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame: expected dtype uint8, got {frame.dtype}")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf = vf.reformat(format=self.pix_fmt, dst_colorspace=self._matrix, dst_color_range="MPEG")
        if self.time_base is None:
            vf.pts, vf.time_base = self.frames_written, 1 / self.rate
            end = float(self.frames_written + 1) / float(self.rate)
        else:
            if pts is None or (self._last_pts is not None and pts <= self._last_pts):
                raise ValueError(
                    f"pts: expected an increasing timestamp after {self._last_pts}, got {pts}"
                )
            vf.pts, vf.time_base = int(pts), self.time_base
            self._last_pts = int(pts)
            end = float(pts * self.time_base) + 1 / float(self.rate)
        try:
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
        except _AV_ERRORS as e:
            raise OutputError(
                self.path, f"encoding frame {self.frames_written} failed ({e})"
            ) from e
        self.frames_written += 1
        if self._audio is not None:
            self._audio.copy_until(end)

    def close(self) -> None:
        """Flush the encoder, finish the file and move it onto ``path``.

        Raises:
            OutputError: no frame was written, or finishing/renaming fails; the temporary
                file is deleted and ``path`` is left as it was.
        """
        if self._closed:
            return
        if self.frames_written == 0:
            self._discard()
            raise OutputError(self.path, "no frames were written; expected at least one")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.copy_until(None)
                self._audio.close()
            self._container.close()
            self.tmp_path.replace(self.path)  # atomic (os.replace)
        except _AV_ERRORS as e:
            self._discard()
            raise OutputError(self.path, f"cannot finish the video ({e})") from e
        except BaseException:
            self._discard()
            raise
        self._closed = True
        log.debug("wrote %s: %d frames at %s fps", self.path, self.frames_written, self.rate)

    def abort(self) -> None:
        """Stop without writing ``path``: the temporary file is deleted."""
        if not self._closed:
            self._discard()

    def _discard(self) -> None:
        self._closed = True
        if self._audio is not None:
            with contextlib.suppress(*_AV_ERRORS):
                self._audio.close()
        with contextlib.suppress(*_AV_ERRORS):
            self._container.close()
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(
    path: Path | str,
    frames: Iterable[np.ndarray],
    fps: float | Fraction,
    crf: int = 18,
    audio_from: Path | str | None = None,
) -> int:
    """Encode frames to ``path`` with :class:`VideoWriter` (size taken from the first frame).

    Args:
        path: output video (.mp4, .m4v, .mov, .mkv).
        frames: (H, W, 3) uint8 RGB, all the same size.
        fps: frame rate.
        crf: x264 quality.
        audio_from: file whose audio is copied into the output.

    Returns:
        The number of frames written.

    Raises:
        OutputError: ``frames`` is empty or the file cannot be written.
    """
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise OutputError(path, "no frames to write; expected at least one")
    if first.ndim != 3 or first.shape[2] != 3:
        raise ShapeError("frames[0]", first.shape, "(H, W, 3) RGB")
    height, width = first.shape[:2]
    with VideoWriter(path, fps, width, height, crf=crf, audio_from=audio_from) as writer:
        writer.write(first)
        for frame in it:
            writer.write(frame)
    return writer.frames_written


@dataclass(frozen=True)
class FrameTable:
    """Presentation timestamps of every frame of a video, read from its packets (no decoding).

    Attributes:
        time_base: unit of ``pts``, seconds.
        pts: one int per frame, in presentation order; empty when the container gives no
            timestamps (then frames are found by counting, see :func:`read_range`).
    """

    time_base: Fraction
    pts: list[int]


def frame_table(path: Path | str) -> FrameTable:
    """The :class:`FrameTable` of ``path``'s video stream (timestamps kept exactly, VFR too).

    Raises:
        InputError, VideoDecodeError: as :func:`probe_video`.
    """
    path = Path(path)
    _check_video_path(path)
    try:
        container, stream = _open_av(path)
    except _AV_ERRORS:  # OpenCV may still read it (see read_frames): frames are counted
        return FrameTable(Fraction(1), [])
    try:
        pts: list[int] = []
        for packet in container.demux(stream):
            if _is_flush(packet):
                continue
            if packet.pts is None:
                return FrameTable(Fraction(stream.time_base), [])
            pts.append(int(packet.pts))
        if stream.frames > 0 and len(pts) < stream.frames:
            raise VideoDecodeError(
                path,
                f"file ends after {len(pts)} of the {stream.frames} frames its header lists; "
                "it is truncated",
            )
        counts = Counter(pts)
        if len(counts) < len(pts):
            # frames are put back in presentation order by their timestamps: a shared one
            # leaves the order undefined, and the encoder refuses it (after the attack ran)
            at, n = counts.most_common(1)[0]
            raise VideoDecodeError(
                path,
                f"{len(pts) - len(counts)} of its {len(pts)} frames repeat an earlier frame's "
                f"timestamp ({n} frames at pts {at}); expected a distinct timestamp per frame "
                "(re-encode it with fresh timestamps)",
            )
        return FrameTable(Fraction(stream.time_base), sorted(pts))
    except _AV_ERRORS as e:
        raise VideoDecodeError(path, f"cannot read its packets ({e})") from e
    finally:
        container.close()


def check_video(path: Path | str) -> VideoInfo:
    """Refuse a video a job cannot be made of, before any work starts: :func:`probe_video`
    (it decodes) and :func:`frame_table` (every frame has its own timestamp). Only the
    packets are read, not decoded, so it costs little next to the job.

    Returns:
        :func:`probe_video`'s :class:`VideoInfo`.

    Raises:
        InputError: the path does not exist or is not a regular file.
        VideoDecodeError: not a decodable video, truncated, or frames share a timestamp.
    """
    info = probe_video(path)
    frame_table(path)
    return info


def read_range(
    path: Path | str, start: int, stop: int, table: FrameTable | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode frames ``start .. stop-1`` (presentation order) of a video.

    With a :class:`FrameTable` that has timestamps, seeks to the keyframe before ``start``
    and decodes from there (cost independent of ``start``); otherwise decodes from the
    beginning and counts.

    Yields:
        (pts, frame): the frame's timestamp in the table's time base (its index without
        timestamps) and the (H, W, 3) uint8 RGB frame.

    Raises:
        VideoDecodeError: fewer frames than asked for could be decoded.
    """
    path = Path(path)
    if not 0 <= start <= stop:
        raise ValueError(f"frame range: expected 0 <= start <= stop, got {start}..{stop}")
    if start == stop:
        return
    if table is None or not table.pts:
        seen = 0
        for i, frame in enumerate(read_frames(path)):
            if i >= stop:
                break
            seen = i + 1
            if i >= start:
                yield i, frame
        if seen < stop:
            raise VideoDecodeError(path, f"ends at frame {seen}; expected {stop}")
        return
    if stop > len(table.pts):
        raise VideoDecodeError(
            path, f"has {len(table.pts)} frames; frames {start}..{stop - 1} asked"
        )
    wanted = table.pts[start:stop]
    want = set(wanted)
    container, stream = _open_av(path)
    stream.thread_type = "AUTO"
    got = 0
    try:
        if start > 0:
            container.seek(wanted[0], stream=stream, backward=True, any_frame=False)
        for packet in container.demux(stream):
            for frame in packet.decode():
                if frame.pts is None or frame.pts not in want:
                    continue
                yield int(frame.pts), frame_rgb(frame)
                got += 1
                if got == len(wanted):
                    return
    except _AV_ERRORS as e:
        raise VideoDecodeError(path, f"decoding frames {start}..{stop} failed ({e})") from e
    finally:
        container.close()
    raise VideoDecodeError(path, f"decoded {got} of frames {start}..{stop - 1}; it is corrupt")


def concat_videos(
    parts: Sequence[Path],
    output: Path | str,
    audio_from: Path | str | None = None,
    rotation: int = 0,
) -> int:
    """Join H.264 segments (same codec settings, increasing timestamps) into one file without
    re-encoding, with the audio of ``audio_from`` copied in; written atomically.

    Returns:
        The number of video packets (frames) written.

    Raises:
        OutputError: no parts, a part cannot be read, or the output cannot be written.
    """
    output = Path(output)
    if not parts:
        raise OutputError(output, "no segments to join; expected at least one")
    fmt = WRITABLE_VIDEO_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise OutputError(output, f"expected a video suffix in {sorted(WRITABLE_VIDEO_FORMATS)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_beside(output)
    options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
    audio: _AudioCopier | None = None
    n = 0
    try:
        with av.open(str(tmp), mode="w", format=fmt, options=options) as out:
            first = av.open(str(parts[0]))
            try:
                vs = out.add_stream_from_template(first.streams.video[0])
            finally:
                first.close()
            if rotation % 360:
                vs.set_display_rotation(rotation % 360)
            if audio_from is not None:
                try:
                    audio = _AudioCopier(Path(audio_from), out)
                except _AV_ERRORS as e:
                    log.warning("%s: joined without audio (%s)", output, e)
            for part in parts:
                with av.open(str(part)) as src:
                    stream = src.streams.video[0]
                    for packet in src.demux(stream):
                        if _is_flush(packet):
                            continue
                        if audio is not None and packet.pts is not None:
                            audio.copy_until(float(packet.pts * packet.time_base))
                        packet.stream = vs
                        out.mux(packet)
                        n += 1
            if audio is not None:
                audio.copy_until(None)
                audio.close()
        tmp.replace(output)
    except _AV_ERRORS as e:
        raise OutputError(output, f"cannot join {len(parts)} segment(s) ({e})") from e
    finally:
        tmp.unlink(missing_ok=True)
    return n
