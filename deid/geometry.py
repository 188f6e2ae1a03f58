"""Plane geometry shared by the crop conventions (:mod:`deid.align`) and the generators, with
no other deid import (a generator's module may use it without reaching the pipeline)."""

from __future__ import annotations

import numpy as np


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama) taking ``src`` points onto ``dst``.

    Args:
        src, dst: (P, 2) float points.

    Returns:
        (3, 3) float64 matrix M with ``dst ~ M @ [x, y, 1]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    var = (s**2).sum() / len(src)
    scale = (sig * np.diag(e)).sum() / max(var, 1e-12)
    m = np.eye(3)
    m[:2, :2] = scale * r
    m[:2, 2] = mu_d - scale * r @ mu_s
    return m


__all__ = ["similarity"]
