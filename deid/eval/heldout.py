"""Held-out figures of a classifier and of one attack: ``deid eval classifier`` (accuracy),
``deid eval attack`` (I-FGSM's targeted success vs eps) and ``deid eval dataset`` (one attack
on held-out faces, everything measured; the input of ``deid report``)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deid import __version__
from deid.attacks import IFGSM, IFGSMConfig, Realistic, RealisticConfig
from deid.attacks.base import AttackConfigBase, perturbation_norms, predict, quantize8, to_uint8
from deid.eval.common import dataset_of, finite_mean, psnr, sample_index, sample_test, ssim
from deid.models import FaceClassifier, load_classifier
from deid.models.train import evaluate as accuracy
from deid.targets import choose_targets

if TYPE_CHECKING:
    from deid.detect import Detector


def classifier_accuracy(checkpoint: str | Path, data: Path | None = None) -> dict[str, Any]:
    """Top-1/top-5 accuracy of a checkpoint on the held-out split recorded in it."""
    model = load_classifier(checkpoint)
    ds = dataset_of(model, data)
    x, y = ds.tensors("test")
    with torch.no_grad():
        res = accuracy(model, x, y)
    return {
        "checkpoint": str(checkpoint),
        "dataset": ds.name,
        "split": ds.split,
        **res,
        "recorded": {k: model.meta.accuracy.get(k) for k in ("top1", "top5", "n")},
    }


def attack_table(
    classifier: str | Path,
    data: Path | None = None,
    n: int = 200,
    eps_list: list[float] | None = None,
    target_modes: list[str] | None = None,
    steps: int = 20,
    alpha: float = 2 / 255,
    realistic: bool = True,
    device: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Targeted success of I-FGSM per eps and target mode, and of the realistic attack.

    Success is counted *after rounding to 8-bit pixels*: the adversarial images are
    quantised and classified again.
    """
    from deid.pipeline import resolve_device

    dev = resolve_device(device)
    model = load_classifier(classifier, dev)
    ds = dataset_of(model, data)
    x, y = sample_test(ds, n, seed)
    x = x.to(dev)
    logits = predict(model, x)
    clean_acc = float((logits.argmax(1).cpu() == y).float().mean())
    eps_list = eps_list or [2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255]
    target_modes = target_modes or ["least-likely", "nearest"]
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(seed)
    for mode in target_modes:
        t = choose_targets(logits, mode, g).to(dev)  # type: ignore[arg-type]
        for eps in eps_list:
            t0 = time.perf_counter()
            r = IFGSM(IFGSMConfig(eps=eps, alpha=min(alpha, eps), steps=steps))(model, x, t)
            ok = predict(model, quantize8(r.images)).argmax(1) == t
            rows.append(
                {
                    "attack": "ifgsm",
                    "target": mode,
                    "eps": eps,
                    "eps_255": round(eps * 255, 2),
                    "success": float(ok.float().mean()),
                    "mean_steps": float(r.steps.float().mean()),
                    "mean_psnr": finite_mean(psnr(x, quantize8(r.images))),
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
        if realistic:
            t0 = time.perf_counter()
            r = Realistic(RealisticConfig())(model, x, t)
            adv = quantize8(r.images)
            ok = predict(model, adv).argmax(1) == t
            p = psnr(x, adv)
            rows.append(
                {
                    "attack": "realistic",
                    "target": mode,
                    "eps": None,
                    "eps_255": None,
                    "success": float(ok.float().mean()),
                    "mean_steps": float(r.steps.float().mean()),
                    "mean_psnr": finite_mean(p[ok]),
                    "mean_l2": float(r.norms["l2"][ok].mean()) if ok.any() else None,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
    return {
        "classifier": str(classifier),
        "dataset": ds.name,
        "n": len(x),
        "clean_top1": clean_acc,
        "steps": steps,
        "alpha_255": round(alpha * 255, 2),
        "device": str(dev),
        "rows": rows,
    }


def format_table(table: dict[str, Any]) -> str:
    """Markdown table of :func:`attack_table`'s rows."""
    head = (
        f"{table['classifier']} on {table['dataset']} held-out, n={table['n']}, clean top-1 "
        f"{table['clean_top1']:.3f}; success after 8-bit rounding\n\n"
        "| attack | target | eps | success | mean steps | mean PSNR (dB) |\n"
        "|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in table["rows"]:
        eps = f"{r['eps_255']:g}/255" if r["eps"] is not None else "-"
        ps = (
            f"{r['mean_psnr']:.1f}"
            if r["mean_psnr"] is not None and math.isfinite(r["mean_psnr"])
            else "-"
        )
        lines.append(
            f"| {r['attack']} | {r['target']} | {eps} | {100 * r['success']:.1f}% "
            f"| {r['mean_steps']:.1f} | {ps} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# deid eval dataset: one attack on held-out faces, everything measured
# --------------------------------------------------------------------------------------------
DETECT_MARGIN = 0.25  # the face crop is placed in a frame this much wider on every side
N_EXAMPLES = 8  # faces kept (as PNG) for the contact sheet


def _rgb8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) [0, 1] -> (N, H, W, 3) uint8 (grayscale repeated)."""
    a = to_uint8(x)
    return np.repeat(a, 3, axis=3) if a.shape[3] == 1 else a


def detection_frames(x: torch.Tensor, margin: float = DETECT_MARGIN) -> list[np.ndarray]:
    """Each face crop placed in a mid-grey frame ``margin`` of its longer side wider on every
    side (a dataset crop is cut tight; a detector needs some context around the face)."""
    out = []
    for img in _rgb8(x):
        p = round(margin * max(img.shape[:2]))
        out.append(np.pad(img, ((p, p), (p, p), (0, 0)), constant_values=128))
    return out


def utility_detector(device: torch.device | str = "cpu") -> Detector:
    """The detector of the utility check (:func:`detected`): MTCNN for faces from 20 px with
    p >= 0.9, at full resolution (crops in frames are small; no tiling or padding)."""
    from deid.detect.plain import plain_mtcnn

    return plain_mtcnn(min_face_size=20, min_score=0.9, device=device)


def detected(detector: Detector, x: torch.Tensor, batch: int = 64) -> np.ndarray:
    """(N,) bool: MTCNN finds a face in each crop placed in a frame (:func:`detection_frames`)."""
    frames = detection_frames(x)
    found = []
    for i in range(0, len(frames), batch):
        found += [len(d) > 0 for d in detector.detect(frames[i : i + batch])]
    return np.asarray(found, bool)


def sparse_confusion(rows: np.ndarray, cols: np.ndarray) -> list[list[int]]:
    """``[[row, col, count], ...]`` of the nonzero cells of a confusion matrix."""
    pairs, counts = np.unique(np.stack([rows, cols], 1), axis=0, return_counts=True)
    return [[int(r), int(c), int(k)] for (r, c), k in zip(pairs, counts, strict=True)]


def _png_b64(img: np.ndarray) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _summary(v: np.ndarray) -> dict[str, float | None]:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"mean": None, "median": None, "min": None, "max": None}
    return {
        "mean": round(float(v.mean()), 5),
        "median": round(float(np.median(v)), 5),
        "min": round(float(v.min()), 5),
        "max": round(float(v.max()), 5),
    }


def _rounded(v: np.ndarray, nd: int = 5) -> list[float | None]:
    return [round(float(a), nd) if np.isfinite(a) else None for a in np.asarray(v, float)]


def dataset_eval(
    classifier: str | Path,
    attack: str = "ifgsm",
    eps_list: list[float] | None = None,
    n: int = 200,
    target: str | None = None,
    steps: int | None = None,
    data: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    detect: bool = True,
    examples: int = N_EXAMPLES,
    batch_size: int = 100,
    progress: bool = False,
    attack_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Attack ``n`` held-out faces of the classifier's dataset and measure the result.

    For each eps (one row; attacks without an L-inf budget give one row with ``eps=None``):
    targeted success and original-identity recognition after rounding to 8-bit pixels;
    L0/L1/L2/L-inf of the perturbation, PSNR and SSIM of the crops; whether MTCNN still
    finds the face (each crop placed in a frame with a margin; compared with the clean
    crop); the confusion of true identities with the predictions after de-identification.
    Per-sample values and ``examples`` faces (base64 PNG) are kept for ``deid report``.

    Args:
        classifier: ``yaleb-mlp``, ``celeba-cnn`` or a checkpoint path.
        attack: a name in :data:`deid.attacks.ATTACKS`.
        eps_list: L-inf budgets (I-FGSM: required budget, default 4, 8 and 16 / 255;
            realistic: optional cap; conceal has none and refuses eps).
        target: ``least-likely``, ``nearest``, ``random`` or a class id (default: the attack's).
        steps: override the attack's iteration count.
        attack_params: the attack's other settings (e.g. ``margin``, ``eot`` of a YAML
            config); without them the attack class's defaults (plain I-FGSM: 20 steps of
            2/255). ``eps`` and ``steps`` given above win.

    Raises:
        ConfigError: unknown attack, eps for an attack without one, a bad target.
    """
    from deid.attacks import ATTACKS, attack_config
    from deid.pipeline import resolve_device

    budgets = _budgets(attack, eps_list)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = load_classifier(classifier, dev)
    ds = dataset_of(model, data)
    x, y = sample_test(ds, n, seed)
    x = x.to(dev)
    labels = y.numpy()
    logits = predict(model, x)
    probs = torch.softmax(logits.float(), 1).cpu()
    pred0 = probs.argmax(1).numpy()
    mode = _target_mode(attack, target, attack_params)
    t = choose_targets(logits, mode, torch.Generator().manual_seed(seed)).to(dev)  # type: ignore[arg-type]
    if mode == "lookalike":  # a generator's lookalike is chosen on its new faces
        first = ATTACKS[attack][0](
            attack_config(attack, **_attack_settings(attack, None, steps, attack_params))
        )
        if hasattr(first, "lookalike"):
            t = first.lookalike(model, x, batch_size)
    detector = None
    det_clean = None
    if detect:
        detector = utility_detector(dev)
        det_clean = detected(detector, x)
    ex_idx = np.unique(np.linspace(0, len(x) - 1, min(examples, len(x))).round().astype(int))
    clean_u8 = _rgb8(x[torch.as_tensor(ex_idx, device=dev)])
    rows: list[dict[str, Any]] = []
    for eps in tqdm(budgets, desc=f"eval {attack}", unit="eps", disable=not progress):
        cfg = attack_config(attack, **_attack_settings(attack, eps, steps, attack_params))
        row, adv = _attack_row(
            model, cfg, ATTACKS[attack][0](cfg), x, t, labels, pred0, ex_idx, batch_size
        )
        if detector is not None and det_clean is not None:
            _add_detection(row, detected(detector, adv), det_clean)
        rows.append(row)
    return {
        "kind": "eval-dataset",
        "deid_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "classifier": str(classifier),
        "dataset": ds.name,
        "split": ds.split,
        "class_names": list(model.meta.class_names),
        "attack": attack,
        "target_mode": mode,
        "n": len(x),
        "seed": seed,
        "device": str(dev),
        "detect_margin": DETECT_MARGIN if detect else None,
        "clean": {
            "top1": round(float((pred0 == labels).mean()), 4),
            "mean_conf": round(float(probs.max(1).values.mean()), 4),
            "detected": round(float(det_clean.mean()), 4) if det_clean is not None else None,
            "confusion": sparse_confusion(labels, pred0),
        },
        "per_sample": {
            "index": [int(i) for i in np.asarray(ds.test)[sample_index(len(ds.test), n, seed)]],
            "label": labels.tolist(),
            "pred": pred0.tolist(),
            "conf": _rounded(probs.max(1).values.numpy(), 4),
            "target": t.cpu().numpy().tolist(),
            **({"detected": det_clean.tolist()} if det_clean is not None else {}),
        },
        "examples": {"samples": ex_idx.tolist(), "clean": [_png_b64(a) for a in clean_u8]},
        "rows": rows,
    }


def _target_mode(
    attack: str, target: str | None, attack_params: dict[str, Any] | None
) -> str | int:
    """The target mode: ``target``, else the attack settings', else the attack's default; a
    class id as an int."""
    from deid.attacks import DEFAULT_TARGET

    mode: str | int = target or (attack_params or {}).get("target") or DEFAULT_TARGET[attack]
    if isinstance(mode, str) and mode.isdigit():
        mode = int(mode)
    return mode


def _budgets(attack: str, eps_list: list[float] | None) -> list[float | None]:
    """The L-inf budgets :func:`dataset_eval` runs ``attack`` at (``[None]``: its own).

    Raises:
        ConfigError: unknown attack, or eps for an attack without one.
    """
    from deid.attacks import ATTACKS
    from deid.errors import ConfigError

    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; available: {sorted(ATTACKS)}")
    has_eps = "eps" in ATTACKS[attack][1].model_fields
    if eps_list and not has_eps:
        raise ConfigError(f"attack {attack!r} has no eps (it is unbounded); leave --eps out")
    if not eps_list:
        eps_list = [4 / 255, 8 / 255, 16 / 255] if attack == "ifgsm" else []
    return list(eps_list) if eps_list else [None]


def _attack_settings(
    attack: str, eps: float | None, steps: int | None, attack_params: dict[str, Any] | None
) -> dict[str, Any]:
    """The attack's config fields for one budget: ``attack_params`` with eps and steps set."""
    params: dict[str, Any] = {k: v for k, v in (attack_params or {}).items() if k != "name"}
    if eps is not None:
        params["eps"] = eps
        if attack == "ifgsm":
            params["alpha"] = min(params.get("alpha", 2 / 255), eps)
    if steps is not None:
        params["steps"] = steps
    return params


def _attack_row(
    model: FaceClassifier,
    cfg: AttackConfigBase,
    atk: Any,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: np.ndarray,
    pred0: np.ndarray,
    ex_idx: np.ndarray,
    batch_size: int,
) -> tuple[dict[str, Any], torch.Tensor]:
    """One row of :func:`dataset_eval` (everything but detection) and the 8-bit adversarial
    images it measured."""
    used_eps = getattr(cfg, "eps", None)
    t0 = time.perf_counter()
    advs, step_counts = [], []
    for i in range(0, len(x), batch_size):
        r = atk(model, x[i : i + batch_size], t[i : i + batch_size])
        advs.append(quantize8(r.images.detach()))
        step_counts.append(r.steps.cpu())
    adv = torch.cat(advs)
    seconds = time.perf_counter() - t0
    p_adv = torch.softmax(predict(model, adv).float(), 1).cpu()
    pred1 = p_adv.argmax(1).numpy()
    norms = {k: v.cpu().numpy() for k, v in perturbation_norms(x, adv).items()}
    ps = psnr(x, adv).cpu().numpy()
    ss = ssim(x, adv)
    success = pred1 == t.cpu().numpy()
    original = pred1 == labels
    row: dict[str, Any] = {
        # the budget the attack ran with (its own default when none was given)
        "eps": used_eps,
        "eps_255": round(used_eps * 255, 2) if used_eps is not None else None,
        "config": cfg.model_dump(mode="json"),
        "n": len(x),
        "success": round(float(success.mean()), 4),
        "original_recognised": round(float(original.mean()), 4),
        # of the faces the classifier recognised before, the share it still recognises
        "original_kept": round(float(original[pred0 == labels].mean()), 4)
        if (pred0 == labels).any()
        else None,
        "mean_steps": round(float(torch.cat(step_counts).float().mean()), 2),
        "seconds": round(seconds, 2),
        "norms": {k: _summary(v) for k, v in norms.items()},
        "l0_fraction": _summary(norms["l0"] / x[0].numel()),
        "psnr": _summary(ps),
        "ssim": _summary(ss),
        "confusion_after": sparse_confusion(labels, pred1),
        "per_sample": {
            "pred": pred1.tolist(),
            "conf": _rounded(p_adv.max(1).values.numpy(), 4),
            "success": success.tolist(),
            **{k: _rounded(v) for k, v in norms.items()},
            "psnr": _rounded(ps, 3),
            "ssim": _rounded(ss, 4),
        },
        "examples": [_png_b64(a) for a in _rgb8(adv[torch.as_tensor(ex_idx)])],
    }
    return row, adv


def _add_detection(row: dict[str, Any], det_adv: np.ndarray, det_clean: np.ndarray) -> None:
    """Add to a row whether MTCNN still finds each de-identified face."""
    row["detected"] = round(float(det_adv.mean()), 4)
    # of the faces MTCNN found before de-identification, the share it still finds
    row["detection_kept"] = round(float(det_adv[det_clean].mean()), 4) if det_clean.any() else None
    row["per_sample"]["detected"] = det_adv.tolist()


def format_dataset_eval(rep: dict[str, Any]) -> str:
    """Markdown table of :func:`dataset_eval`'s rows."""
    c = rep["clean"]
    det = f", MTCNN finds {100 * c['detected']:.1f}%" if c.get("detected") is not None else ""
    lines = [
        f"{rep['attack']} ({rep['target_mode']}) vs {rep['classifier']} on {rep['dataset']} "
        f"held-out, n={rep['n']}; clean top-1 {100 * c['top1']:.1f}%{det}; after 8-bit rounding",
        "",
        "| eps | success | original recognised | mean L2 | mean Linf (/255) | mean L0 (%) "
        "| PSNR (dB) | SSIM | MTCNN kept | seconds |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def f(v: float | None, fmt: str, scale: float = 1.0) -> str:
        return "-" if v is None else format(v * scale, fmt)

    for r in rep["rows"]:
        eps = f"{r['eps_255']:g}/255" if r["eps"] is not None else "-"
        lines.append(
            f"| {eps} | {f(r['success'], '.1%')} | {f(r['original_recognised'], '.1%')} "
            f"| {f(r['norms']['l2']['mean'], '.3f')} | {f(r['norms']['linf']['mean'], '.1f', 255)} "
            f"| {f(r['l0_fraction']['mean'], '.1f', 100)} | {f(r['psnr']['mean'], '.1f')} "
            f"| {f(r['ssim']['mean'], '.3f')} | {f(r.get('detection_kept'), '.1%')} "
            f"| {r['seconds']:.1f} |"
        )
    return "\n".join(lines)
