"""Live video in and out: a source that yields decoded frames as they arrive (a URL, or a file
played at its own frame rate) and a sink that encodes them at once (a URL or a file).

Which URLs work is decided by the FFmpeg that PyAV bundles. In PyAV 18.1 (FFmpeg 8.1) it has
the ``udp``, ``rtp``, ``tcp``, ``rtmp`` and ``http(s)`` protocols and the ``rtsp`` demuxer and
muxer (which use them), but no ``srt`` (it is built without libsrt): :func:`protocols` lists
what the running build has.

Sinks encode H.264 with x264's ``zerolatency`` tuning (no frame is held back), into MPEG-TS for
``udp://`` and ``tcp://``, RTSP (``ANNOUNCE``/``RECORD`` to a server such as MediaMTX) for
``rtsp://``, FLV for ``rtmp://``, and by suffix for a file (``.mp4``, ``.mkv``, ``.ts``),
written beside its path and renamed into place when closed (atomic, as
:class:`~deid.io.video.VideoWriter`).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np

from deid.errors import InputError, OutputError
from deid.io.paths import tmp_beside
from deid.io.video import (
    display_rotation,
    frame_rgb,
    sample_aspect_of,
    shown_size,
    upright,
)

log = logging.getLogger(__name__)

#: Container of each URL scheme a sink writes.
SINK_FORMATS = {
    "udp": "mpegts",
    "tcp": "mpegts",
    "rtp": "rtp_mpegts",
    "rtsp": "rtsp",
    "rtmp": "flv",
}
#: Container of each file suffix a sink writes.
FILE_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".ts": "mpegts", ".mov": "mov"}

_AV_ERRORS = (av.FFmpegError, OSError, ValueError)


def is_url(s: str | Path) -> bool:
    """Whether ``s`` is a URL (``scheme://...``) rather than a file path."""
    return isinstance(s, str) and "://" in s and not s.startswith("file://")


@functools.cache
def protocols() -> dict[str, frozenset[str]]:
    """The protocols of PyAV's bundled FFmpeg: ``{"input": {...}, "output": {...}}`` (empty
    sets where the library cannot be asked, e.g. a PyAV built against a system FFmpeg)."""
    found: dict[str, frozenset[str]] = {"input": frozenset(), "output": frozenset()}
    libs = sorted((Path(av.__file__).parent.parent / "av.libs").glob("libavformat*"))
    try:
        lib = ctypes.CDLL(str(libs[0])) if libs else ctypes.CDLL("libavformat.so")
        fn = lib.avio_enum_protocols
    except (OSError, AttributeError):
        return found
    fn.restype = ctypes.c_char_p
    fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    for key, output in (("input", 0), ("output", 1)):
        opaque, names = ctypes.c_void_p(None), set()
        while name := fn(ctypes.byref(opaque), output):
            names.add(name.decode())
        found[key] = frozenset(names)
    return found


def check_protocol(url: str, direction: str) -> str:
    """The scheme of ``url``, checked against this FFmpeg's ``input`` or ``output``
    protocols (:class:`InputError` / :class:`OutputError` naming what it has)."""
    scheme = urlsplit(url).scheme.lower()
    have = protocols()[direction]
    # rtsp is a demuxer/muxer over tcp/udp, not a protocol of its own
    needed = {"rtsp": "tcp"}.get(scheme, scheme)
    if have and needed not in have:
        raise (InputError if direction == "input" else OutputError)(
            url,
            f"this FFmpeg build (PyAV {av.__version__}) has no {scheme!r} {direction} "
            f"protocol; it has: {', '.join(sorted(have))}",
        )
    return scheme


@dataclass
class SourceFrame:
    """One decoded frame and when it arrived.

    Attributes:
        index: position in the source (0, 1, ...), dropped frames included.
        pts: presentation time in seconds from the first frame.
        image: (H, W, 3) uint8 RGB.
        arrival: ``time.monotonic()`` when it was decoded (or, for a file played in real
            time, when its time came).
        interlaced: the decoder flags it interlaced (two fields woven; broadcast 1080i).
    """

    index: int
    pts: float
    image: np.ndarray
    arrival: float
    interlaced: bool = False


class StreamSource:
    """Frames of a URL as they arrive, or of a file (played at its own rate with ``realtime``).

    Args:
        src: a URL FFmpeg can open (``udp://host:port``, ``rtsp://...``, ...) or a video file.
        realtime: pace a file's frames by their timestamps (a URL always arrives in real time).
        idle_timeout: seconds without data after which a URL counts as ended.
        open_timeout: seconds to wait for a URL's first data.

    Attributes:
        width, height, rate: of the video stream, as players show it (a file's display
            rotation applied: its frames come upright).
        rotation: a file's display rotation (degrees counter-clockwise; 0 for a URL).
        sample_aspect: the pixel shape (width / height) of anamorphic video, upright;
            None: square.
        audio: the source's first audio stream (passed through untouched), or None.
        audio_packets: its packets as they are demuxed, each with its time in seconds from
            the first video frame (:meth:`frames` fills it; the encoder drains it).
    """

    def __init__(
        self,
        src: str | Path,
        realtime: bool = True,
        idle_timeout: float = 5.0,
        open_timeout: float = 30.0,
    ) -> None:
        self.src = src
        self.url = is_url(src)
        self.realtime = realtime and not self.url
        options: dict[str, str] = {}
        if self.url:
            check_protocol(str(src), "input")
            # little probing, so the first frame comes soon (not fflags=nobuffer: it throws the
            # probed packets away, the first keyframe with them)
            options = {"probesize": "32768", "analyzeduration": "500000"}
            if str(src).startswith("rtsp://"):
                options["rtsp_transport"] = "tcp"
        elif not Path(src).is_file():
            raise InputError(Path(src), "no such file")
        try:
            self._container = av.open(
                str(src),
                options=options,
                timeout=(open_timeout, idle_timeout) if self.url else None,
            )
            self._stream = self._container.streams.video[0]
            self.audio = self._container.streams.audio[0] if self._container.streams.audio else None
        except (av.FFmpegError, OSError, IndexError) as e:
            raise InputError(str(src), f"cannot open the video stream ({e})") from e
        ctx = self._stream.codec_context
        if self.url:
            ctx.thread_type = "SLICE"  # frame threads hold frames back
        # a file's display rotation (a phone's portrait clip is stored sideways); a URL's
        # container (MPEG-TS, RTSP) carries none
        self.rotation = 0 if self.url else display_rotation(Path(src))
        self.width, self.height = shown_size(ctx.width, ctx.height, self.rotation)
        sar = sample_aspect_of(self._stream)
        if sar is not None and (self.width, self.height) != (ctx.width, ctx.height):
            sar = 1 / sar  # a quarter turn turns the pixels too
        self.sample_aspect = sar
        rate = Fraction(self._stream.average_rate or self._stream.guessed_rate or 25)
        self.rate = rate if 0 < rate <= 240 else Fraction(25)  # probed mid-stream: unsure
        self.bad_packets = 0
        self.audio_packets: collections.deque[tuple[float, Any]] = collections.deque()
        self._audio_early: list[Any] = []  # audio demuxed before the first video frame
        self._pts0: float | None = None

    def frames(self, stop: Callable[[], bool] = lambda: False) -> Iterator[SourceFrame]:
        """Decoded frames in order until the source ends, breaks or ``stop()`` is true.

        A URL that breaks (an error or ``idle_timeout`` without data) ends the iteration with
        a warning; a file that cannot be decoded raises :class:`InputError`.
        """
        t0 = pts0 = None
        for index, frame in enumerate(self._decoded()):
            if stop():
                return
            pts = float(frame.time) if frame.time is not None else index / float(self.rate)
            if pts0 is None:
                pts0, t0 = pts, time.monotonic()
                self._pts0 = pts0
                for packet in self._audio_early:
                    self._keep_audio(packet)
                self._audio_early.clear()
            rel = pts - pts0
            assert t0 is not None
            if self.realtime:
                while (wait := t0 + rel - time.monotonic()) > 0:
                    if stop():
                        return
                    time.sleep(min(wait, 0.05))
            image = upright(frame_rgb(frame), self.rotation)
            interlaced = bool(getattr(frame, "interlaced_frame", False))
            yield SourceFrame(index, rel, image, time.monotonic(), interlaced)

    def _keep_audio(self, packet: Any) -> None:
        """Queue an audio packet at its time from the first video frame (dropped before it)."""
        if self._pts0 is None:
            self._audio_early.append(packet)
            return
        if packet.pts is None or packet.time_base is None:
            return
        at = float(packet.pts * packet.time_base) - self._pts0
        if at >= 0:
            self.audio_packets.append((at, packet))

    def _decoded(self) -> Iterator[Any]:
        """av frames; a URL's undecodable packets (joined mid-stream, before a keyframe; a
        lost datagram) are skipped and counted in :attr:`bad_packets`. Audio packets go to
        :attr:`audio_packets`."""
        streams = [self._stream] + ([self.audio] if self.audio is not None else [])
        try:
            for packet in self._container.demux(streams):
                if packet.stream.type == "audio":
                    if packet.size:
                        self._keep_audio(packet)
                    continue
                try:
                    yield from self._stream.decode(packet)
                except av.InvalidDataError as e:
                    if not self.url:
                        raise
                    self.bad_packets += 1
                    log.debug("%s: skipped an undecodable packet (%s)", self.src, e)
        except (av.FFmpegError, OSError) as e:
            if not self.url:
                raise InputError(str(self.src), f"decoding failed ({e})") from e
            log.warning("%s: the stream broke or went quiet (%s); ending", self.src, e)

    def close(self) -> None:
        with contextlib.suppress(*_AV_ERRORS):
            self._container.close()


# audio codecs a container holds where PyAV's ``supported_codecs`` (FFmpeg's codec tag
# tables) does not list them: MPEG-TS carries these by stream type
_AUDIO_CODECS = {"mpegts": frozenset({"aac", "mp2", "mp3", "ac3", "eac3", "opus"})}


class StreamSink:
    """Encode frames as they come to a URL or a file (H.264, ``zerolatency``).

    Args:
        dst: ``udp://host:port`` (MPEG-TS), ``rtsp://server/path``, ``rtmp://...`` or a file
            (``.mp4``, ``.mkv``, ``.ts``, ``.mov``).
        width, height: frame size.
        rate: nominal frame rate.
        crf: x264 quality (0 lossless .. 51).
        preset: x264 preset (``ultrafast`` keeps up on a small CPU).
        sample_aspect: the pixel shape to tag (anamorphic video); None: square.
        audio: a source's audio stream to pass through (:meth:`write_audio`); None, or one
            the output's container cannot hold (a warning): video only.

    A file is written to a temporary name beside ``dst`` and renamed into place by
    :meth:`close` (after at least one frame), so it is either whole and readable or absent.
    """

    def __init__(
        self,
        dst: str | Path,
        width: int,
        height: int,
        rate: Fraction,
        crf: int = 18,
        preset: str = "ultrafast",
        sample_aspect: Fraction | None = None,
        audio: Any = None,
    ) -> None:
        self.dst = dst
        self.audio_written = 0
        self._audio: Any = None
        self.url = is_url(dst)
        self.frames_written = 0
        self._closed = False
        self._last: int | None = None
        self.tmp: Path | None = None
        target = str(dst)
        fmt = self.format_of(dst)
        if self.url:
            if fmt == "mpegts" and "pkt_size" not in target:
                target += ("&" if "?" in target else "?") + "pkt_size=1316"  # 7 TS packets
        else:
            path = Path(dst)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = tmp_beside(path)
            target = str(self.tmp)
        self.time_base = Fraction(1, 90000)
        pix_fmt = "yuv444p" if width % 2 or height % 2 else "yuv420p"
        self.pix_fmt = pix_fmt
        try:
            options = {"rtsp_transport": "tcp"} if fmt == "rtsp" else {}
            if fmt == "mpegts":  # PES lengths let a demuxer pass a frame on as it ends
                options["omit_video_pes_length"] = "0"
            self._container = av.open(target, mode="w", format=fmt, options=options)
            s = self._container.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = width, height, pix_fmt
            s.time_base = self.time_base
            ctx = s.codec_context
            ctx.time_base = self.time_base
            ctx.colorspace, ctx.color_range = 6, 1  # BT.601, MPEG range (as VideoWriter)
            ctx.color_primaries, ctx.color_trc = 6, 6
            if sample_aspect is not None:
                ctx.sample_aspect_ratio = Fraction(sample_aspect)
            # a keyframe every second, so a receiver joining late starts within one
            s.options = {
                "crf": str(crf),
                "preset": preset,
                "tune": "zerolatency",
                "x264-params": f"keyint={max(1, round(rate))}",
            }
            self._stream = s
            if audio is not None:
                name = audio.codec_context.name
                if name in _AUDIO_CODECS.get(fmt, self._container.supported_codecs):
                    self._audio = self._container.add_stream_from_template(audio, opaque=True)
                else:
                    log.warning("%s: no audio: %s cannot hold %s", dst, fmt, name)
        except _AV_ERRORS as e:
            self._discard()
            raise OutputError(str(dst), f"cannot open the output ({e})") from e

    @staticmethod
    def format_of(dst: str | Path) -> str:
        """The container ``dst`` gets (checks its scheme or suffix before anything opens).

        Raises:
            OutputError: an unknown scheme or suffix, or a protocol this FFmpeg lacks.
        """
        if is_url(dst):
            fmt = SINK_FORMATS.get(check_protocol(str(dst), "output"))
            if fmt is None:
                raise OutputError(str(dst), f"expected one of {sorted(SINK_FORMATS)} URLs")
            return fmt
        fmt = FILE_FORMATS.get(Path(dst).suffix.lower())
        if fmt is None:
            raise OutputError(Path(dst), f"expected a video suffix in {sorted(FILE_FORMATS)}")
        return fmt

    def write(self, image: np.ndarray, pts: float) -> None:
        """Encode one RGB frame at ``pts`` seconds (increasing; a repeat is nudged forward)."""
        tick = round(pts / self.time_base)
        if self._last is not None and tick <= self._last:
            tick = self._last + 1
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        vf = vf.reformat(format=self.pix_fmt, dst_colorspace="ITU601", dst_color_range="MPEG")
        vf.pts, vf.time_base = tick, self.time_base
        try:
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
        except _AV_ERRORS as e:
            raise OutputError(str(self.dst), f"sending frame failed ({e})") from e
        self._last = tick
        self.frames_written += 1

    def write_audio(self, packet: Any, at: float) -> None:
        """Mux a source audio packet (untouched) at ``at`` seconds on the video's clock; a
        sink without audio ignores it. A packet the muxer refuses is dropped (audio never
        stops the video)."""
        if self._audio is None:
            return
        tb = packet.time_base
        length = packet.duration
        packet.stream = self._audio
        packet.pts = packet.dts = round(at / tb)
        if length is not None:
            packet.duration = length
        packet.time_base = tb
        try:
            self._container.mux(packet)
            self.audio_written += 1
        except _AV_ERRORS as e:
            log.debug("%s: an audio packet was dropped (%s)", self.dst, e)

    def close(self) -> None:
        """Flush and finish the output (a file is renamed into place; without a frame it is
        removed and :class:`OutputError` raised)."""
        if self._closed:
            return
        if self.frames_written == 0:
            self._discard()
            raise OutputError(str(self.dst), "no frame was written")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            if self.tmp is not None:
                self.tmp.replace(Path(self.dst))
        except _AV_ERRORS as e:
            self._discard()
            raise OutputError(str(self.dst), f"cannot finish the output ({e})") from e
        self._closed = True

    def _discard(self) -> None:
        self._closed = True
        with contextlib.suppress(*_AV_ERRORS, AttributeError):
            self._container.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        if not self._closed:
            self._discard()
