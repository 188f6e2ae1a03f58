"""Latency of ``deid stream`` on loopback UDP, and a check that no face leaves unprocessed.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/stream.py --fps 1,2,4 [--frames 40] [--height 720] [--max-latency 1]

What it does:

1. **Clip.** The first N frames of ``$DEID_DATA_DIR/scenes/pedestrians_walking_1080p.mp4``
   scaled to ``--height`` (``cv2.INTER_AREA``). Each frame gets its index stamped in its
   bottom-left corner as 16 black/white blocks of 16x16 px (12 bits of index, 4 bits of
   index mod 16 as a check), so a received frame is matched to the frame sent whatever the
   timestamps and drops did (frames whose stamp does not read back are counted, not matched).
2. **Reference detections.** deid's own detector (the settings ``deid stream`` runs with) on
   every stamped input frame, offline.
3. **Baseline.** The clip sent at each rate straight to the receiver (no deid): the transport's
   own latency (encode ultrafast/zerolatency, MPEG-TS over UDP, decode), and a check of the
   face check: here every face must count as *unprocessed*.
4. **Per rate,** ``deid stream udp://127.0.0.1:P1 udp://127.0.0.1:P2 --max-latency S`` in a
   subprocess (models load and warm up before the sender starts), a sender thread that encodes
   frame i at t0 + i / fps (H.264 ultrafast/zerolatency, crf 18, MPEG-TS, 1316-byte packets)
   and a receiver thread that decodes deid's output. Per matched frame: end-to-end latency =
   time decoded by the receiver - time the sender muxed it; added latency = that - the
   baseline's median at the same rate. A face of the reference detections is *unprocessed* in
   a received frame when the mean absolute difference inside its box, between the received
   frame and the frame sent, is under ``max(4, 2 x`` that frame's difference outside faces``)``
   (that is, only the two encodings changed it: about 1x); deid obscures faces (pixelate:
   tens of grey levels, less on a face of little contrast) or perturbs them (I-FGSM,
   16/255). The factor was 3 until a pixelated low-contrast face in a frame the encoder had
   blurred (9.3 grey levels inside its box, 3.15 outside) was counted as unprocessed.
5. **Prints** one row per rate: sent, received, deid's own counts (attacked, degraded,
   dropped), latency p50/p99 (deid's own: arrival to sent; end-to-end; added), unprocessed
   faces, and the load average during the run. ``--json OUT`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE = "scenes/pedestrians_walking_1080p.mp4"
BITS, CHECK, BLOCK = 12, 4, 16
TAIL = 3


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def data_dir() -> Path:
    return Path(os.environ.get("DEID_DATA_DIR", REPO.parent / "shared" / "data"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# frame counter stamped in the pixels
# --------------------------------------------------------------------------------------------
def _bits(i: int) -> list[int]:
    v = (i & ((1 << BITS) - 1)) | ((i % 16) << BITS)
    return [(v >> k) & 1 for k in range(BITS + CHECK)]


def stamp(frame: np.ndarray, i: int) -> np.ndarray:
    out = frame.copy()
    y = out.shape[0] - BLOCK
    for k, b in enumerate(_bits(i)):
        out[y : y + BLOCK, k * BLOCK : (k + 1) * BLOCK] = 255 if b else 0
    return out


def read_stamp(frame: np.ndarray) -> int | None:
    y = frame.shape[0] - BLOCK
    q = BLOCK // 4
    bits = [
        int(frame[y + q : y + BLOCK - q, k * BLOCK + q : (k + 1) * BLOCK - q].mean() > 127)
        for k in range(BITS + CHECK)
    ]
    v = sum(b << k for k, b in enumerate(bits))
    i = v & ((1 << BITS) - 1)
    return i if (v >> BITS) == i % 16 else None


def clip_frames(n: int, height: int) -> list[np.ndarray]:
    from deid.io import read_frames

    frames = []
    for f in read_frames(data_dir() / SOURCE):
        h, w = f.shape[:2]
        width = round(w * height / h / 2) * 2
        frames.append(
            stamp(cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA), len(frames))
        )
        if len(frames) == n:
            break
    return frames


def reference_boxes(frames: list[np.ndarray], config: str | None) -> list[np.ndarray]:
    from deid.config import load_settings
    from deid.detect import build_detector

    settings = load_settings(config, {"pipeline": {"device": "cpu"}})
    det = build_detector(settings.detector, __import__("torch").device("cpu"))
    return [det.detect([f])[0].boxes.copy() for f in frames]


# --------------------------------------------------------------------------------------------
# sender and receiver
# --------------------------------------------------------------------------------------------
def send(port: int, frames: list[np.ndarray], fps: float, sent: dict[int, float]) -> None:
    c = av.open(
        f"udp://127.0.0.1:{port}?pkt_size=1316",
        mode="w",
        format="mpegts",
        options={"omit_video_pes_length": "0"},
    )
    s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    s.options = {
        "crf": "18",
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x264-params": f"keyint={max(1, round(fps))}",
    }
    tb = Fraction(1, 90000)
    t0 = time.monotonic() + 0.2
    # TAIL black frames after the clip: FFmpeg's demuxer (its H.264 parser) passes a frame on
    # only when the next one starts, so the clip's last frames need followers
    black = np.zeros_like(frames[0])
    for i, f in enumerate([*frames, *[stamp(black, len(frames) + k) for k in range(TAIL)]]):
        while (wait := t0 + i / fps - time.monotonic()) > 0:
            time.sleep(min(wait, 0.01))
        vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
        vf.pts, vf.time_base = round(i / fps / tb), tb
        for p in s.encode(vf):
            c.mux(p)
        if i < len(frames):
            sent[i] = time.monotonic()
    for p in s.encode():
        c.mux(p)
    c.close()


class Receiver(threading.Thread):
    def __init__(self, port: int, idle: float) -> None:
        super().__init__(daemon=True)
        self.port, self.idle = port, idle
        self.got: dict[int, tuple[float, np.ndarray]] = {}
        self.unreadable = 0
        self.error: str | None = None

    def run(self) -> None:
        from deid.io.video import frame_rgb  # decoded as deid decodes its input

        try:
            c = av.open(
                f"udp://127.0.0.1:{self.port}?fifo_size=1000000&overrun_nonfatal=1",
                options={"probesize": "32768", "analyzeduration": "500000"},
                timeout=(120, self.idle),
            )
            st = c.streams.video[0]
            st.codec_context.thread_type = "SLICE"
            for f in c.decode(st):
                img = frame_rgb(f)
                t = time.monotonic()
                i = read_stamp(img)
                if i is None:
                    self.unreadable += 1
                elif i not in self.got:
                    self.got[i] = (t, img)
        except (av.FFmpegError, OSError) as e:
            self.error = str(e)  # the timeout that ends it, usually


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------
def unprocessed_faces(
    sent: np.ndarray, got: np.ndarray, boxes: np.ndarray
) -> tuple[int, list[float], float]:
    diff = np.abs(sent.astype(np.float32) - got.astype(np.float32)).mean(2)
    mask = np.ones(diff.shape, bool)
    h, w = diff.shape
    rects = []
    for b in boxes:
        x1, y1, x2, y2 = (round(float(v)) for v in b)
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
        if x2 > x1 and y2 > y1:
            rects.append((x1, y1, x2, y2))
            mask[y1:y2, x1:x2] = False
    bg = float(diff[mask].mean()) if mask.any() else 0.0
    threshold = max(4.0, 2 * bg)
    mads = [float(diff[y1:y2, x1:x2].mean()) for x1, y1, x2, y2 in rects]
    return sum(m < threshold for m in mads), mads, threshold


def save_pair(path: Path, sent: np.ndarray, got: np.ndarray, box: np.ndarray) -> None:
    """The face's surroundings (its box grown by half its size per side) as sent and as
    received, side by side, enlarged 4x (nearest), the box drawn on both."""
    h, w = sent.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = (x2 - x1) / 2, (y2 - y1) / 2
    r = [
        max(0, round(x1 - mx)),
        max(0, round(y1 - my)),
        min(w, round(x2 + mx)),
        min(h, round(y2 + my)),
    ]
    pair = []
    for img in (sent, got):
        c = np.ascontiguousarray(img[r[1] : r[3], r[0] : r[2]])
        c = cv2.resize(c, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
        p1 = (round(4 * (x1 - r[0])), round(4 * (y1 - r[1])))
        p2 = (round(4 * (x2 - r[0])), round(4 * (y2 - r[1])))
        pair.append(cv2.rectangle(c, p1, p2, (255, 0, 0), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.hstack(pair), cv2.COLOR_RGB2BGR))


def pct(v: list[float], p: float) -> float | None:
    return round(float(np.percentile(v, p)), 3) if v else None


def run_once(
    frames: list[np.ndarray],
    boxes: list[np.ndarray],
    fps: float,
    deid_args: list[str] | None,
    baseline_p50: float | None = None,
    flagged: Path | None = None,
) -> dict[str, Any]:
    p1, p2 = free_port(), free_port()
    rx = Receiver(p2, idle=3.0 if deid_args is None else 8.0)
    rx.start()
    proc = None
    summary: dict[str, Any] = {}
    load0 = os.getloadavg()[0]
    if deid_args is not None:
        cmd = [
            sys.executable,
            "-m",
            "deid.cli",
            "stream",
            f"udp://127.0.0.1:{p1}?fifo_size=1000000&overrun_nonfatal=1",
            f"udp://127.0.0.1:{p2}",
            "--idle-timeout",
            "3",
            "--stats-every",
            "0",
            *deid_args,
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        for line in proc.stderr:  # models loaded and warmed up: it opens the source now
            if "stream: opening" in line:
                time.sleep(0.5)  # its socket is bound in a moment
                break
            if proc.poll() is not None:
                raise SystemExit(f"deid stream failed: {proc.stderr.read()}")
    sent: dict[int, float] = {}
    send(p2 if deid_args is None else p1, frames, fps, sent)
    if proc is not None:
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"deid stream exited {proc.returncode}: {err[-2000:]}")
        summary = json.loads(out.strip().splitlines()[-1])
    rx.join(30)
    load1 = os.getloadavg()[0]
    lat = [rx.got[i][0] - sent[i] for i in sorted(rx.got) if i in sent]
    unprocessed, faces, which = 0, 0, []
    for i, (_, img) in rx.got.items():
        if i < len(frames):
            u, mads, threshold = unprocessed_faces(frames[i], img, boxes[i])
            unprocessed += u
            faces += len(mads)
            if flagged is not None and deid_args is not None:
                for b, m in zip(boxes[i], mads, strict=False):
                    if m < threshold:
                        save_pair(
                            flagged / f"{fps:g}fps_f{i}_{b[0]:.0f}_{b[1]:.0f}.png",
                            frames[i],
                            img,
                            b,
                        )
            which += [
                {
                    "frame": i,
                    "box": [round(float(v), 1) for v in b],
                    "mad": round(m, 2),
                    "threshold": round(threshold, 2),
                }
                for b, m in zip(boxes[i], mads, strict=False)
                if m < threshold
            ]
    p50 = pct(lat, 50)
    return {
        "fps": fps,
        "sent": len(sent),
        "received": sum(i < len(frames) for i in rx.got),
        "unreadable_stamps": rx.unreadable,
        "deid": summary,
        "e2e_p50": p50,
        "e2e_p99": pct(lat, 99),
        "added_p50": round(p50 - baseline_p50, 3) if p50 is not None and baseline_p50 else None,
        "added_p99": round(pct(lat, 99) - baseline_p50, 3)  # type: ignore[operator]
        if lat and baseline_p50
        else None,
        "faces_checked": faces,
        "unprocessed_faces": unprocessed,
        "unprocessed": which,  # frame, reference box, mean difference and its threshold
        "load_avg": [round(load0, 2), round(load1, 2)],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fps", default="1,2,4", help="comma-separated frame rates to send")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--max-latency", type=float, default=1.0)
    ap.add_argument("--config")
    ap.add_argument("--deid-args", default="", help="extra `deid stream` flags, one string")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--flagged", type=Path, help="folder for the faces found unprocessed")
    args = ap.parse_args()
    rates = [float(r) for r in args.fps.split(",")]
    say(f"clip: {args.frames} frames at {args.height}p; reference detections ...")
    frames = clip_frames(args.frames, args.height)
    boxes = reference_boxes(frames, args.config)
    say(f"{sum(len(b) for b in boxes)} faces in {sum(len(b) > 0 for b in boxes)} frames")
    flags = ["--max-latency", str(args.max_latency), "--device", "cpu"]
    if args.config:
        flags += ["--config", args.config]
    flags += args.deid_args.split()
    rows = []
    for fps in rates:
        say(f"{fps} fps: baseline (no deid) ...")
        base = run_once(frames, boxes, fps, None)
        say(f"{fps} fps: deid stream {' '.join(flags)} ...")
        row = run_once(frames, boxes, fps, flags, base["e2e_p50"], args.flagged)
        row["baseline"] = base
        rows.append(row)
        say(json.dumps(row))
    print(
        f"\n{args.frames} frames at {args.height}p, --max-latency {args.max_latency}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        "| fps | sent | received | attacked | degraded | dropped | deid p50/p99 s | "
        "end-to-end p50/p99 s | added p50/p99 s | faces checked | unprocessed "
        "(baseline) | load avg |"
    )
    print("|---" * 12 + "|")
    for r in rows:
        d, b = r["deid"], r["baseline"]
        print(
            f"| {r['fps']:g} | {r['sent']} | {r['received']} | {d.get('attacked')} | "
            f"{d.get('degraded')} | {d.get('dropped')} | {d.get('latency_p50')} / "
            f"{d.get('latency_p99')} | {r['e2e_p50']} / {r['e2e_p99']} | {r['added_p50']} / "
            f"{r['added_p99']} | {r['faces_checked']} | {r['unprocessed_faces']} "
            f"({b['unprocessed_faces']} of {b['faces_checked']}) | "
            f"{r['load_avg'][0]}-{r['load_avg'][1]} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if any(r["unprocessed_faces"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
