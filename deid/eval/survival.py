"""Does the de-identification survive encoding? (``deid eval survival``)

Held-out faces are attacked the way the pipeline attacks them (each crop at its own
resolution, one target per face, the attack of the loaded config with EOT on or off), pasted
into 1280x720 frames at realistic, unaligned positions, written with deid's own writers
(H.264 through :class:`deid.io.VideoWriter` at each crf; JPEG through
:func:`deid.io.write_image`), decoded again, and the same crops are re-classified.

A face appears in ``frames`` consecutive frames, moving by a fraction of a pixel each frame
and attacked afresh in each (as in a video, where every frame's crop differs a little), so
the encoder sees independent perturbations in its predicted (P/B) frames, not only in the
intra frame. Reported per output: targeted success (the classifier's top class is the
target), original-identity recognition (its top class is the clean face's), and the PSNR
of the adversarial crops before encoding (the attack's cost) and after decoding.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deid.attacks import ATTACKS, DEFAULT_TARGET, attack_config, build_attack
from deid.attacks.base import AttackConfigBase, from_uint8, predict, to_uint8
from deid.attacks.codec import FRAME_HW, background, compose_frames, cut_faces, layout
from deid.attacks.eot import translate
from deid.config import deep_merge
from deid.errors import ConfigError
from deid.eval.common import dataset_of, finite_mean, psnr, sample_test
from deid.io import read_frames, read_image, write_image, write_video
from deid.models import FaceClassifier, load_classifier
from deid.models.precision import resolve_precision
from deid.targets import choose_targets

log = logging.getLogger(__name__)


def _with_eot(cfg: AttackConfigBase, on: bool) -> AttackConfigBase:
    eot = getattr(cfg, "eot", None)
    if eot is None:
        if on:
            raise ConfigError(f"attack {getattr(cfg, 'name', '?')!r} has no eot setting")
        return cfg
    return cfg.model_copy(update={"eot": eot.model_copy(update={"enabled": on})})


def base_attack(attack: str, config: str | Path | None = None) -> AttackConfigBase:
    """The attack config of ``config`` (default: configs/default.yaml) when it is ``attack``,
    else that attack's defaults."""
    from deid.config import load_settings

    s = load_settings(config)
    if s.attack.name == attack:
        return s.attack
    return attack_config(attack)


def survival_table(
    classifier: str | Path = "celeba-cnn",
    n: int = 200,
    crfs: list[int] | None = None,
    jpeg: list[int] | None = None,
    eot: list[bool] | None = None,
    attack: str = "ifgsm",
    config: str | Path | None = None,
    data: Path | None = None,
    frames: int = 2,
    align: int = 1,
    device: str = "cpu",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Targeted success after H.264 and JPEG round trips, with and without EOT.

    Args:
        classifier: shipped name or checkpoint path.
        n: held-out faces (seeded sample).
        crfs: H.264 crf values to encode at.
        jpeg: JPEG qualities (4:4:4, as deid writes image folders).
        eot: EOT settings to compare (``[False, True]``).
        attack: ``ifgsm`` or ``conceal``; the config's attack settings are used when it names
            this attack.
        config: YAML config (default configs/default.yaml).
        data: dataset file (default: the shared one).
        frames: frames each face appears in (attacked afresh in each).
        align: snap face corners to multiples of this many pixels.
        device: torch device.
        seed: sample, layout and jitter seed.
        overrides: attack config fields to set (e.g. ``{"steps": 40}``).
        precision: the gradient passes' precision, as ``pipeline.precision``
            (:mod:`deid.models.precision`).

    Returns:
        A dict with the settings and one row per (eot, output).
    """
    from deid.pipeline import resolve_device

    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; available: {sorted(ATTACKS)}")
    crfs = [18, 23, 28] if crfs is None else crfs
    jpeg = [90] if jpeg is None else jpeg
    eot = [False, True] if eot is None else eot
    dev = resolve_device(device)
    model: FaceClassifier = load_classifier(classifier, dev)
    model.set_gradient_precision(resolve_precision(precision, dev))
    ds = dataset_of(model, data)
    x, y = sample_test(ds, n, seed)
    if x.shape[1] == 1:  # frames are RGB; the classifier takes luma itself
        x = x.expand(-1, 3, -1, -1).contiguous()
    n = len(x)
    fh, fw = x.shape[-2:]
    clean_logits = predict(model, x.to(dev)).cpu()
    pred = clean_logits.argmax(1)
    mode = (
        (overrides or {}).get("target")
        or base_attack(attack, config).target
        or DEFAULT_TARGET[attack]
    )
    t = choose_targets(clean_logits, mode, torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    # the face in frame k, shifted by k * (0.35, 0.55) px (sub-pixel motion)
    xs = [x] + [
        translate(x, 0.35 * k, 0.55 * k).mul(255).round().div(255) for k in range(1, frames)
    ]
    places = layout(n, (fh, fw), FRAME_HW, seed, align)
    bg = background(FRAME_HW, seed)
    rows: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    for on in eot:
        cfg = _with_eot(base_attack(attack, config), on)
        if overrides:
            cfg = cfg.model_validate(deep_merge(cfg.model_dump(), overrides))
        settings["eot_on" if on else "eot_off"] = cfg.model_dump(mode="json")
        advs, secs, steps = _attack_frames(build_attack(cfg), model, xs, t, cfg.batch_size, dev)
        adv8 = [from_uint8(to_uint8(a)) for a in advs]
        video = compose_frames(bg, adv8, places, frames)
        common = {
            "attack_s_per_face": round(secs / (n * frames), 4),
            "mean_steps": round(float(steps.float().mean()), 2),
        }
        results: list[tuple[str, list[torch.Tensor], float]] = [("lossless", adv8, 0.0)]
        results += _round_trips(video, crfs, jpeg, places, frames, (fh, fw))
        for output, got, sec in results:
            row = _score(model, dev, xs, adv8, got, t, pred)
            rows.append({"eot": on, "output": output, **row, **common, "codec_s": round(sec, 2)})
        log.info("eot %s done: %.1f s attack", "on" if on else "off", secs)
    return {
        "classifier": str(classifier),
        "dataset": ds.name,
        "attack": attack,
        "n": n,
        "frames": frames,
        "align": align,
        "frame_size": [FRAME_HW[1], FRAME_HW[0]],
        "clean_top1": round(float((pred == y).float().mean()), 4),
        "device": str(dev),
        "precision": model.gradient_precision,
        "torch_threads": torch.get_num_threads(),
        "configs": settings,
        "rows": rows,
    }


def _attack_frames(
    att: Any,
    model: FaceClassifier,
    xs: list[torch.Tensor],
    t: torch.Tensor,
    batch: int,
    dev: torch.device,
) -> tuple[list[torch.Tensor], float, torch.Tensor]:
    """Each frame's faces attacked afresh: the adversarial crops per frame index (CPU), the
    seconds the attack took, and the steps it took per face."""
    advs, secs, steps = [], 0.0, []
    for x in xs:
        t0 = time.perf_counter()
        out = []
        for i in range(0, len(x), batch):
            r = att(model, x[i : i + batch].to(dev), t[i : i + batch].to(dev))
            out.append(r.images.cpu())
            steps.append(r.steps.cpu())
        secs += time.perf_counter() - t0
        advs.append(torch.cat(out))
    return advs, secs, torch.cat(steps)


def _round_trips(
    video: list[np.ndarray],
    crfs: list[int],
    jpeg: list[int],
    places: list[tuple[int, int, int]],
    frames: int,
    hw: tuple[int, int],
) -> list[tuple[str, list[torch.Tensor], float]]:
    """The video written by deid's H.264 writer at each crf and as JPEG at each quality, read
    back: (output name, the crops cut out again, seconds) per output."""
    results: list[tuple[str, list[torch.Tensor], float]] = []
    with tempfile.TemporaryDirectory(prefix="deid-survival-") as tmp:
        for crf in crfs:
            t0 = time.perf_counter()
            path = Path(tmp) / f"crf{crf}.mp4"
            write_video(path, video, fps=25, crf=crf)
            decoded = list(read_frames(path))
            got = cut_faces(decoded, places, frames, hw)
            results.append((f"h264 crf {crf}", got, time.perf_counter() - t0))
        for q in jpeg:
            t0 = time.perf_counter()
            decoded = []
            for j, f in enumerate(video):
                p = Path(tmp) / f"{j}.jpg"
                write_image(p, f, quality=q)
                decoded.append(read_image(p))
            got = cut_faces(decoded, places, frames, hw)
            results.append((f"jpeg q{q}", got, time.perf_counter() - t0))
    return results


def _score(
    model: FaceClassifier,
    dev: torch.device,
    xs: list[torch.Tensor],
    adv8: list[torch.Tensor],
    got: list[torch.Tensor],
    t: torch.Tensor,
    pred: torch.Tensor,
) -> dict[str, Any]:
    """Targeted success and original-identity rate of ``got`` (per frame index), and PSNRs."""
    preds = torch.cat([predict(model, g.to(dev)).argmax(1).cpu() for g in got])
    reps = len(got)
    return {
        "faces": len(preds),
        "target_rate": round(float((preds == t.repeat(reps)).float().mean()), 4),
        "original_rate": round(float((preds == pred.repeat(reps)).float().mean()), 4),
        "psnr_attack": finite_mean(torch.cat([psnr(a, b) for a, b in zip(xs, adv8, strict=True)])),
        "psnr_output": finite_mean(torch.cat([psnr(a, b) for a, b in zip(xs, got, strict=True)])),
    }


def format_survival(table: dict[str, Any]) -> str:
    """Markdown table of :func:`survival_table`'s rows."""
    lines = [
        f"{table['classifier']}, {table['attack']}, {table['n']} held-out faces x "
        f"{table['frames']} frames in {table['frame_size'][0]}x{table['frame_size'][1]} "
        f"frames (clean top-1 {table['clean_top1']:.3f})",
        "",
        "| EOT | output | target after decoding | original identity | PSNR attack (dB) "
        "| PSNR output (dB) | attack s/face |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for r in table["rows"]:
        pa = "-" if r["psnr_attack"] is None else f"{r['psnr_attack']:.1f}"
        po = "-" if r["psnr_output"] is None else f"{r['psnr_output']:.1f}"
        lines.append(
            f"| {'on' if r['eot'] else 'off'} | {r['output']} | {100 * r['target_rate']:.1f}% "
            f"| {100 * r['original_rate']:.1f}% | {pa} | {po} | {r['attack_s_per_face']:.3f} |"
        )
    return "\n".join(lines)
