"""``deid stream SRC DST``: de-identify a live feed frame by frame, within a latency budget.

Three threads and two bounded queues::

    decode (StreamSource) -> [queue] -> protect -> [queue] -> encode (StreamSink)

Frames leave in the order they came. Each frame gets, by how late it already is when its
turn comes (its *age*, from arrival to now) against ``max_latency``:

* **attacked**: detect, classify, protect (the pipeline's protection step, as ``deid run``)
  and paste back; a face whose protection failed is obscured (fail closed) - when its age
  plus the expected cost of the attack (per face, measured as it runs) fits the budget;
* **degraded**: detect, then obscure every detected face (its aligned square and its box grown
  by ``tracking.margin``) without attacking - when the attack would not fit;
* **dropped**: not sent at all - when even detection would not fit (age plus the measured
  detection time over the budget) and a newer frame is waiting, or when the input queue is
  full (the oldest frame goes).
  A frame is never sent without detection having run on it: obscuring only the last known
  faces would miss a face that has just come into view.

In every frame sent, faces tracked from earlier frames but not detected in this one (for up
to ``tracking.max_gap`` frames, at their predicted box; faces seen in two frames or more, so
that a patch of ground mistaken once is not carried on) are obscured too. Unlike ``deid run``
the stream does not re-read its own output (there is no time to): a face counts as protected
when the protection step says so on the uint8 pixels, before encoding.

A file source is played at its own frame rate (``realtime``, the default, so it behaves as a
feed); without ``realtime`` every frame is read as fast as the pipeline takes it (back
pressure: nothing is degraded or dropped). A URL source ends when it has sent nothing for
``idle_timeout`` seconds; a source that ends or breaks closes the output cleanly. Setting
``stop`` (the CLI sets it on Ctrl-C and SIGTERM) ends the stream at once: the output is
finished with the frames already encoded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deid.align import obscure, paste_owned
from deid.errors import OutputError
from deid.io.stream import SourceFrame, StreamSink, StreamSource, check_protocol, is_url
from deid.io.video import field_frame
from deid.pipeline.resources import Resources
from deid.pipeline.stages import TargetMemory, classify, crop, detect
from deid.pipeline.tracking import OnlineTracker
from deid.targets import choose_targets
from deid.types import Detections, FaceCrop

log = logging.getLogger(__name__)

_END = object()  # end of stream, passed down the queues


@dataclass
class StreamOptions:
    """How a stream is run (``deid stream`` flags).

    Attributes:
        max_latency: seconds a frame may spend from arrival to being sent; later frames are
            degraded (no attack) or dropped (see the module docstring).
        queue: frames the decode and encode queues hold each.
        realtime: play a file source at its own frame rate (a URL always is).
        idle_timeout: seconds without data after which a URL source counts as ended.
        stats_every: seconds between progress logs (0: none).
        obscure_only: never attack; obscure every face (the cheapest safe mode).
        preset: x264 preset of the output.
        warm_size: (height, width) to warm up at before a URL source is opened.
    """

    max_latency: float = 1.0
    queue: int = 8
    realtime: bool = True
    idle_timeout: float = 5.0
    stats_every: float = 5.0
    obscure_only: bool = False
    preset: str = "ultrafast"
    warm_size: tuple[int, int] = (720, 1280)


@dataclass
class StreamStats:
    """Counters of a stream; :meth:`summary` is what ``deid stream`` prints at the end."""

    frames_in: int = 0
    frames_out: int = 0
    attacked: int = 0  # frames whose faces went through the protection step
    degraded: int = 0  # frames with faces obscured without an attack (over budget)
    clear: int = 0  # frames without a face (detected or tracked)
    dropped: int = 0  # frames not sent: detection would not fit, or the input queue was full
    faces: int = 0
    faces_tracked: int = 0  # obscured at a tracked box, not detected in that frame
    fail_closed: int = 0  # faces whose protection failed, obscured
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> dict[str, Any]:
        with self.lock:
            lat = np.array(self.latencies, np.float64)
            secs = time.monotonic() - self.started

            def q(p: float) -> float | None:
                return round(float(np.percentile(lat, p)), 4) if len(lat) else None

            return {
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "attacked": self.attacked,
                "degraded": self.degraded,
                "clear": self.clear,
                "dropped": self.dropped,
                "faces": self.faces,
                "faces_tracked": self.faces_tracked,
                "fail_closed": self.fail_closed,
                "latency_p50": q(50),
                "latency_p99": q(99),
                "latency_max": round(float(lat.max()), 4) if len(lat) else None,
                "seconds": round(secs, 2),
                "fps_out": round(self.frames_out / secs, 3) if secs > 0 else None,
            }


class FaceTracks:
    """Faces followed from frame to frame, so that a face the detector misses in one frame is
    still obscured where it should be: the association of ``deid run``'s tracks
    (:class:`deid.pipeline.tracking.OnlineTracker`: IoU with a constant-velocity prediction,
    or close centres for small fast faces), one frame at a time.

    Hysteresis, online (ByteTrack's rule): a detection scoring below ``min_score`` (down to
    the detector's ``track_score``) starts no track; it is kept only where it continues a
    track, i.e. a face the detector was sure of before."""

    def __init__(self, iou_threshold: float, max_gap: int, min_score: float = 0.0) -> None:
        self.max_gap = max_gap
        self.min_score = min_score
        self.tracker = OnlineTracker(iou_threshold, max_gap)

    def update(
        self, index: int, boxes: np.ndarray, scores: np.ndarray | None = None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Link the boxes detected in frame ``index``.

        Returns:
            the predicted boxes of the tracks it did not find (last seen at most
            ``max_gap`` frames before, and seen in two frames or more), to be obscured;
            and which of ``boxes`` are faces ((K,) bool: False for a weak box that
            continues no track).
        """
        ids = self.tracker.step(index, boxes, scores, self.min_score)
        return self.tracker.missing(index, self.max_gap, 2), np.array(ids, int) >= 0


def box_crop(shape: tuple[int, ...], box: Sequence[float], margin: float) -> FaceCrop:
    """A rectangular pseudo-crop over ``box`` grown by ``margin`` of its size per side (what
    :func:`~deid.align.obscure` covers for a face known only by its box)."""
    fh, fw = shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    r0 = int(min(max(0, math.floor(x1 - mx)), fw - 1))
    r1 = int(min(max(0, math.floor(y1 - my)), fh - 1))
    r2 = int(max(r0 + 1, min(fw, math.ceil(x2 + mx))))
    r3 = int(max(r1 + 1, min(fh, math.ceil(y2 + my))))
    corners = np.array([[r0, r1], [r2, r1], [r0, r3], [r2, r3]], np.float32)
    return FaceCrop(
        -1,
        -1,
        (r0, r1, r2, r3),
        np.zeros(0),
        np.eye(2, 3, dtype=np.float32),
        np.asarray(box, np.float32),
        extra={"corners": corners},
    )


class FrameProtector:
    """De-identifies one frame at a time within the latency budget (see the module docstring).

    ``detect_cost`` and ``attack_cost`` (seconds per face) are running estimates, seeded by
    :meth:`warm_up` and updated on every frame (``attack_cost`` on every attacked frame; a
    frame degraded for want of time lowers it by :data:`ATTACK_COST_DECAY`, down to the
    warm-up's figure, so that one slow frame cannot keep the stream from attacking).
    """

    def __init__(self, res: Resources, opts: StreamOptions, stats: StreamStats) -> None:
        self.res, self.opts, self.stats = res, opts, stats
        t = res.settings.tracking
        self.tracks = FaceTracks(t.iou, t.max_gap, res.settings.detector.min_score)
        self.memory = TargetMemory(t.iou)
        self.generator = torch.Generator().manual_seed(res.settings.pipeline.seed)
        self.detect_cost = 0.0
        self.attack_cost = 0.0
        self.warm_attack_cost = 0.0  # the warm-up's figure: where the estimate decays to

    def warm_up(self, height: int, width: int) -> None:
        """Run detection on a frame of the stream's size and the protection step on one face,
        to load everything and measure both costs before the first real frame."""
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for _ in range(2):  # the first call pays for lazy initialisation
            t0 = time.monotonic()
            detect(self.res.track_detector, [frame])
            self.detect_cost = time.monotonic() - t0
        if self.opts.obscure_only:
            return
        size = max(8, min(height, width, 96))
        crops = []
        for _ in range(WARM_FACES):  # a frame's faces go through the protection step together
            face = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            c = box_crop(face.shape, (0, 0, size, size), 0.0)
            crops.append(
                FaceCrop(0, 0, c.region, face, _identity_theta(), c.box, extra=dict(c.extra))
            )
        # as for detection, a first call pays for lazy initialisation (the generator's
        # weights, a low-precision copy); an estimate that overstated the cost would never be
        # corrected, since a frame that is not attacked does not measure it
        self._protect(crops[:1], advance=False)
        t0 = time.monotonic()
        self._protect(crops, advance=False)
        self.attack_cost = self.warm_attack_cost = (time.monotonic() - t0) / len(crops)
        log.info(
            "stream: detection %.3f s per frame, protection %.3f s per face (warm-up)",
            self.detect_cost,
            self.attack_cost,
        )

    def _protect(self, crops: list[FaceCrop], advance: bool = True) -> list[Any]:
        res = self.res
        logits = classify(res.classifier, crops, res.device)
        preds = logits.argmax(1)
        targets = choose_targets(logits, res.target_mode, self.generator)  # type: ignore[arg-type]
        if advance:
            targets = self.memory.assign(crops, targets, preds)
        memory = self.memory.kept if advance else None
        return res.protector.protect(crops, res.context(targets, preds, memory))

    def locate(
        self, index: int, image: np.ndarray, interlaced: bool = False
    ) -> tuple[Detections, list[np.ndarray]]:
        """The faces of frame ``index``: its detections (down to ``detector.track_score``
        where they continue a track, :class:`FaceTracks`) and the predicted boxes of tracked
        faces it did not detect. An ``interlaced`` frame is searched in one field
        (:func:`deid.io.field_frame`: moving faces are combed in the woven frame)."""
        dets = detect(self.res.track_detector, [field_frame(image) if interlaced else image])[0]
        missed, keep = self.tracks.update(index, dets.boxes, dets.scores)
        return Detections(dets.boxes[keep], dets.scores[keep], dets.landmarks[keep]), missed

    def __call__(self, sf: SourceFrame, live: bool, newer: bool = False) -> np.ndarray | None:
        """The frame to send, or None to drop it (only when a ``newer`` frame is waiting:
        the newest frame is always processed, late or not, so the stream goes on)."""
        budget = self.opts.max_latency
        if live and newer and time.monotonic() - sf.arrival + self.detect_cost > budget:
            return None
        t0 = time.monotonic()
        dets, missed = self.locate(sf.index, sf.image, sf.interlaced)
        self.detect_cost = 0.7 * self.detect_cost + 0.3 * (time.monotonic() - t0)
        crops = crop([sf.image], [dets], self.res.classifier)
        out = sf.image.copy()
        fallback = self.res.settings.pipeline.fallback
        margin = self.res.settings.tracking.margin
        attack = bool(crops) and not self.opts.obscure_only
        if attack and live:
            attack = time.monotonic() - sf.arrival + self.attack_cost * len(crops) <= budget
            if not attack:  # only attacked frames measure the cost: one slow frame must not
                # keep the stream from attacking for good, so the estimate falls back towards
                # the warm-up's figure (never below it) while frames are degraded
                self.attack_cost = max(self.warm_attack_cost, ATTACK_COST_DECAY * self.attack_cost)
        failed = 0
        if attack:
            t0 = time.monotonic()
            outcomes = self._protect(crops)
            self.attack_cost = 0.7 * self.attack_cost + 0.3 * (time.monotonic() - t0) / len(crops)
            done = [(c, o.pixels) for c, o in zip(crops, outcomes, strict=True) if o.success]
            paste_owned([out], [c for c, _ in done], [px for _, px in done])
            for c, o in zip(crops, outcomes, strict=True):
                if not o.success:  # after the pastes: none undoes it
                    failed += 1
                    obscure(out, c, fallback)
                    obscure(out, box_crop(out.shape, c.box, margin), fallback)
        else:
            for c in crops:
                obscure(out, c, fallback)
                obscure(out, box_crop(out.shape, c.box, margin), fallback)
        for b in missed:
            obscure(out, box_crop(out.shape, b, margin), fallback)
        with self.stats.lock:
            self.stats.faces += len(crops)
            self.stats.faces_tracked += len(missed)
            self.stats.fail_closed += failed
            if not crops and not missed:
                self.stats.clear += 1
            elif attack:
                self.stats.attacked += 1
            else:
                self.stats.degraded += 1
        return out


#: faces the warm-up sends through the protection step in one call (its cost per face)
WARM_FACES = 4
#: per frame degraded for want of time, the attack's cost estimate falls by this factor,
#: down to the warm-up's figure
ATTACK_COST_DECAY = 0.8


def _identity_theta() -> np.ndarray:
    return np.array([[1, 0, 0], [0, 1, 0]], np.float32)


def _waiting(q: queue.Queue[Any]) -> bool:
    """Whether a frame (not the end) is waiting in ``q``."""
    with q.mutex:
        return any(x is not _END for x in q.queue)


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put with back pressure; False if ``stop`` was set while waiting."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def run_stream(
    src: str | Path,
    dst: str | Path,
    res: Resources,
    opts: StreamOptions | None = None,
    stop: threading.Event | None = None,
    on_stats: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """De-identify ``src`` into ``dst`` until the source ends or ``stop`` is set.

    Returns:
        the stream's :meth:`StreamStats.summary` (also logged every ``stats_every`` seconds
        and passed to ``on_stats``).

    Raises:
        InputError, OutputError: the source or the output cannot be opened, or a file source
            cannot be decoded; whatever a thread raised is raised here after the output is
            closed. A KeyboardInterrupt or ``Terminated`` in the calling thread stops the
            stream, closes the output and is raised again.
    """
    opts = opts or StreamOptions()
    stop = stop or threading.Event()
    # a wrong source or output fails now, not after the warm-up or the first frame
    if is_url(src):
        check_protocol(str(src), "input")
    StreamSink.format_of(dst)
    stats = StreamStats()
    protector = FrameProtector(res, opts, stats)
    if is_url(src):  # warm up before the feed is opened: its data would wait meanwhile
        protector.warm_up(*opts.warm_size)
    log.info("stream: opening %s", src)
    source = StreamSource(src, realtime=opts.realtime, idle_timeout=opts.idle_timeout)
    live = source.url or source.realtime
    if not is_url(src):
        protector.warm_up(source.height, source.width)
    log.info(
        "stream: %s (%dx%d at %s fps%s) -> %s, max latency %.2f s",
        src,
        source.width,
        source.height,
        float(source.rate),
        ", live" if live else "",
        dst,
        opts.max_latency,
    )
    inq: queue.Queue[Any] = queue.Queue(maxsize=max(1, opts.queue))
    outq: queue.Queue[Any] = queue.Queue(maxsize=max(1, opts.queue))
    errors: list[BaseException] = []
    stats.started = time.monotonic()

    def decode() -> None:
        try:
            for sf in source.frames(stop.is_set):
                with stats.lock:
                    stats.frames_in += 1
                if not live:
                    if not _put(inq, sf, stop):
                        return
                    continue
                while True:  # a live source is never held up: the oldest waiting frame goes
                    try:
                        inq.put_nowait(sf)
                        break
                    except queue.Full:
                        try:
                            inq.get_nowait()
                            with stats.lock:
                                stats.dropped += 1
                        except queue.Empty:
                            pass
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            errors.append(e)
            stop.set()
        finally:
            _put(inq, _END, stop)

    def process() -> None:
        try:
            while not stop.is_set():
                try:
                    sf = inq.get(timeout=0.1)
                except queue.Empty:
                    continue
                if sf is _END:
                    break
                out = protector(sf, live, newer=_waiting(inq))
                if out is None:
                    with stats.lock:
                        stats.dropped += 1
                    continue
                if not _put(outq, (out, sf), stop):
                    return
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()
        finally:
            _put(outq, _END, stop)

    def encode() -> None:
        sink: StreamSink | None = None
        try:
            while not stop.is_set():
                try:
                    item = outq.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                out, sf = item
                if sink is None:  # sized by the first frame (a feed joined mid-way may
                    # not say its size before)
                    h, w = out.shape[:2]
                    crf = res.settings.pipeline.crf
                    sink = StreamSink(
                        dst, w, h, source.rate, crf, opts.preset, source.sample_aspect, source.audio
                    )
                _audio_until(source, sink, sf.pts)
                sink.write(out, sf.pts)
                with stats.lock:
                    stats.frames_out += 1
                    stats.latencies.append(time.monotonic() - sf.arrival)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()
        finally:
            try:
                if sink is None:
                    raise OutputError(str(dst), "no frame was sent")
                if not stop.is_set() or not errors:  # the rest of the audio
                    _audio_until(source, sink, None)
                sink.close()
                log.debug("stream: %s finished, %d frames", dst, sink.frames_written)
            except BaseException as e:  # noqa: BLE001
                log.error("stream: %s", e)
                errors.append(e)

    threads = {
        name: threading.Thread(target=fn, name=f"deid-stream-{name}", daemon=True)
        for name, fn in (("decode", decode), ("protect", process), ("encode", encode))
    }
    for t in threads.values():
        t.start()
    next_log = time.monotonic() + opts.stats_every
    try:
        while threads["encode"].is_alive():
            threads["encode"].join(0.1)
            if opts.stats_every and time.monotonic() >= next_log:
                next_log += opts.stats_every
                _log_stats(stats.summary(), on_stats)
    finally:
        stop.set()
        with contextlib.suppress(queue.Full):  # wake the encoder now, not at its next poll
            outq.put_nowait(_END)
        threads["encode"].join(0.8)  # the output is finished with what was encoded
        for t in threads.values():
            t.join(0.05)
        if not threads["decode"].is_alive():
            source.close()  # else it is blocked in a read: left to its timeout
        summary = stats.summary()
        _log_stats(summary, on_stats)
    if errors:
        raise errors[0]
    return summary


def _audio_until(source: StreamSource, sink: StreamSink, seconds: float | None) -> None:
    """Pass the source's audio packets up to ``seconds`` on the video's clock (all: None)
    to the sink, so they interleave with the frames (a dropped frame does not drop its
    sound)."""
    q = source.audio_packets
    while q and (seconds is None or q[0][0] <= seconds):
        at, packet = q.popleft()
        sink.write_audio(packet, at)


def _log_stats(s: dict[str, Any], on_stats: Callable[[dict[str, Any]], None] | None) -> None:
    log.info(
        "stream: %d in, %d out (%d attacked, %d degraded, %d without faces), %d dropped; "
        "latency p50 %s s, p99 %s s",
        s["frames_in"],
        s["frames_out"],
        s["attacked"],
        s["degraded"],
        s["clear"],
        s["dropped"],
        s["latency_p50"],
        s["latency_p99"],
    )
    if on_stats is not None:
        on_stats(s)


__all__ = [
    "FaceTracks",
    "FrameProtector",
    "StreamOptions",
    "StreamStats",
    "box_crop",
    "run_stream",
]
