"""Training of the identity classifiers (``deid train``).

The presets (:data:`deid.models.recipes.RECIPES`) are complete recipes. Augmentation runs
batched on tensors, so a CPU keeps up.

Adversarial training (the seed's defence), on top of any preset:

- ``goodfellow`` (Goodfellow et al. 2014, https://arxiv.org/abs/1412.6572):
  ``J'(theta, x, y) = c J(theta, x, y) + (1 - c) J(theta, x + eps sign(grad_x J(theta, x, y)), y)``;
- ``kurakin`` (Kurakin et al. 2016, "Adversarial Machine Learning at Scale",
  https://arxiv.org/abs/1611.01236, algorithm 1): ``k`` of the ``m`` examples of each
  minibatch are replaced by adversarial ones made with the current network (one-step
  least-likely class or FGSM), and the loss is
  ``1 / ((m - k) + lambda k) (sum_clean L + lambda sum_adv L)``.

Adversarial examples are made in the classifier's input space, [0, 1] pixels (the
normalisation lives inside :class:`~deid.models.classifier.FaceClassifier`), and clipped to it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from deid.attacks.base import attack_mode
from deid.data import FaceDataset, load_celeba, load_yaleb
from deid.data.datasets import dataset_file
from deid.errors import ConfigError
from deid.io import Artefact, check_writes
from deid.models.classifier import ClassifierMeta, FaceClassifier
from deid.models.nets import build_net
from deid.models.recipes import RECIPES, Adversarial, Recipe

log = logging.getLogger(__name__)


def one_step_adversarial(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, method: str = "fgsm", steps: int = 1
) -> Tensor:
    """Adversarial examples made with the current network, in [0, 1] pixel space.

    ``fgsm``: ``x + eps sign(grad_x CE(f(x), y))`` (Goodfellow et al.); ``step-ll``:
    ``x - eps sign(grad_x CE(f(x), y_LL))`` with ``y_LL = argmin_y p(y|x)`` (Kurakin et al.).
    With ``steps > 1``, that many steps of ``max(eps/4, 1/255)``, each projected onto the
    eps-ball and [0, 1] (I-FGSM, or the iterative least-likely class method).
    The plain cross-entropy is used (label smoothing would turn the gradient of a confident
    sample around). The network runs in eval mode with frozen weights for this.

    Args:
        model: a classifier over [0, 1] pixels (e.g. :class:`FaceClassifier`).
        x: (N, C, H, W) float in [0, 1].
        y: (N,) int64 true labels.

    Returns:
        (N, C, H, W) detached, clipped to [0, 1], within ``eps`` of ``x`` in L-inf.
    """
    if len(x) == 0:
        return x.detach()
    x0 = x.detach()
    alpha = eps if steps == 1 else max(eps / 4, 1 / 255)
    xa = x0
    target = y
    with attack_mode(model), torch.enable_grad():
        for i in range(steps):
            xa = xa.clone().requires_grad_(True)
            logits = model(xa)
            if method == "step-ll" and i == 0:
                target = logits.detach().argmin(1)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), xa)
            sign = -1.0 if method == "step-ll" else 1.0
            xa = xa.detach() + sign * alpha * grad.sign()
            xa = torch.min(torch.max(xa, x0 - eps), x0 + eps).clamp(0.0, 1.0)
    return xa


def goodfellow_loss(
    model: nn.Module, x: Tensor, y: Tensor, c: float, eps: float, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """The seed's adversarial objective ``c J(x, y) + (1 - c) J(x + eps sign(grad_x J), y)``.

    Returns the loss (a scalar with a graph to the weights) and the clean logits.
    """
    logits = model(x)
    clean = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if c >= 1.0:
        return clean, logits
    x_adv = one_step_adversarial(model, x, y, eps, "fgsm")
    adv = F.cross_entropy(model(x_adv), y, label_smoothing=label_smoothing)
    return c * clean + (1.0 - c) * adv, logits


def kurakin_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    k: int,
    lam: float,
    eps: float,
    method: str = "step-ll",
    label_smoothing: float = 0.0,
    steps: int = 1,
) -> tuple[Tensor, Tensor]:
    """Kurakin et al.'s minibatch loss: the first ``k`` of the ``m`` examples are replaced by
    adversarial ones (made with the current network), and
    ``loss = (sum_clean L + lam sum_adv L) / ((m - k) + lam k)``.

    Returns the loss and the logits of the mixed minibatch B' (adversarial first).
    """
    m = len(x)
    k = max(0, min(int(k), m))
    if k:
        x = torch.cat([one_step_adversarial(model, x[:k], y[:k], eps, method, steps), x[k:]])
    logits = model(x)
    per = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    denom = (m - k) + lam * k
    if denom <= 0:
        raise ConfigError("kurakin: (m - k) + lambda k must be > 0 (lambda 0 with k = m)")
    return (per[k:].sum() + lam * per[:k].sum()) / denom, logits


def training_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    label_smoothing: float = 0.0,
    adversarial: Adversarial | None = None,
) -> tuple[Tensor, Tensor]:
    """One minibatch's loss (clean, goodfellow or kurakin) and the logits it saw."""
    if adversarial is None:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits
    a = adversarial
    if a.mode == "goodfellow":
        return goodfellow_loss(model, x, y, a.c, a.eps, label_smoothing)
    k = len(x) // 2 if a.k is None else a.k
    return kurakin_loss(model, x, y, k, a.lam, a.eps, a.method, label_smoothing, a.steps)


def subset_indices(labels: np.ndarray, part: int, parts: int, seed: int = 0) -> np.ndarray:
    """Positions (into ``labels``) of part ``part`` of ``parts`` disjoint, per-identity
    stratified subsets: every identity's images are shuffled (seeded) and dealt round-robin,
    so each part holds about 1/parts of each identity (the seed's "cross training-set"
    transferability case)."""
    if not (parts >= 1 and 0 <= part < parts):
        raise ConfigError(f"subset must be I/N with 0 <= I < N, got {part}/{parts}")
    rng = np.random.default_rng(seed)
    keep = []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        keep.append(idx[part::parts])
    return np.sort(np.concatenate(keep))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def augment(x: Tensor, aug: dict[str, float], g: torch.Generator) -> Tensor:
    """Random photometric and geometric jitter of a batch (N, C, H, W) in [0, 1]."""
    n, c = x.shape[:2]
    dev = x.device

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return (torch.rand(*(shape or (n,)), generator=g) * (hi - lo) + lo).to(dev)

    # geometry: one affine per image (rotation, scale, shift, flip)
    rot = u(-1, 1) * math.radians(aug.get("rotate", 0.0))
    scl = 1.0 + u(-1, 1) * aug.get("scale", 0.0)
    tx, ty = u(-1, 1) * aug.get("shift", 0.0) * 2, u(-1, 1) * aug.get("shift", 0.0) * 2
    flip = torch.where(u(0, 1) < aug.get("flip", 0.0), -1.0, 1.0)
    cos, sin = torch.cos(rot) / scl, torch.sin(rot) / scl
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # photometry
    if aug.get("gamma"):
        x = x.clamp_min(1e-4) ** torch.exp(u(-1, 1) * aug["gamma"]).view(-1, 1, 1, 1)
    if aug.get("brightness"):
        x = x * (1 + u(-1, 1) * aug["brightness"]).view(-1, 1, 1, 1)
    if aug.get("contrast"):
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * (1 + u(-1, 1) * aug["contrast"]).view(-1, 1, 1, 1) + m
    if c == 3 and aug.get("saturation"):
        gray = x.mean(1, keepdim=True)
        x = (x - gray) * (1 + u(-1, 1) * aug["saturation"]).view(-1, 1, 1, 1) + gray
    if c == 3 and aug.get("gray"):
        sel = (u(0, 1) < aug["gray"]).view(-1, 1, 1, 1)
        x = torch.where(
            sel,
            (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))
            .sum(1, keepdim=True)
            .expand_as(x),
            x,
        )
    if aug.get("noise"):
        x = x + torch.randn(x.shape, generator=g).to(dev) * aug["noise"] * u(0, 1).view(-1, 1, 1, 1)
    x = x.clamp(0, 1)
    if aug.get("erase"):
        h, w = x.shape[-2:]
        sel = u(0, 1) < aug["erase"]
        eh, ew = (u(0.15, 0.4) * h).long(), (u(0.15, 0.4) * w).long()
        y0, x0 = (u(0, 1) * (h - eh)).long(), (u(0, 1) * (w - ew)).long()
        yy = torch.arange(h, device=dev).view(1, h, 1)
        xx = torch.arange(w, device=dev).view(1, 1, w)
        box = (
            (yy >= y0.view(-1, 1, 1))
            & (yy < (y0 + eh).view(-1, 1, 1))
            & (xx >= x0.view(-1, 1, 1))
            & (xx < (x0 + ew).view(-1, 1, 1))
            & sel.view(-1, 1, 1)
        )
        x = torch.where(box.unsqueeze(1), torch.rand(x.shape, generator=g).to(dev), x)
    return x


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch: int = 256) -> dict[str, float]:
    """Top-1 and top-5 accuracy of ``model`` on [0, 1] images."""
    model.eval()
    dev = next(model.parameters()).device
    top1 = top5 = 0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch].to(dev))
        t = y[i : i + batch].to(dev)
        k = min(5, logits.shape[1])
        top = logits.topk(k, 1).indices
        top1 += int((top[:, 0] == t).sum())
        top5 += int((top == t[:, None]).any(1).sum())
    return {"top1": top1 / len(x), "top5": top5 / len(x), "n": len(x)}


def accuracy_under_attack(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, batch: int = 256
) -> dict[str, Any]:
    """Held-out top-1 under untargeted FGSM (one step of eps) and I-FGSM (10 steps of
    max(eps/4, 1/255)) at ``eps``, the adversarial images rounded to 8 bits."""
    from deid.attacks.registry import attack_config, build_attack

    alpha = max(eps / 4, 1 / 255)
    attacks = {
        "fgsm": build_attack(attack_config("ifgsm", eps=eps, alpha=eps, steps=1, targeted=False)),
        "ifgsm": build_attack(
            attack_config("ifgsm", eps=eps, alpha=alpha, steps=10, targeted=False)
        ),
    }
    model.eval()
    dev = next(model.parameters()).device
    out: dict[str, Any] = {"eps": eps, "eps_255": round(eps * 255, 3), "ifgsm_steps": 10}
    for name, atk in attacks.items():
        right = 0
        for i in range(0, len(x), batch):
            xb, yb = x[i : i + batch].to(dev), y[i : i + batch].to(dev)
            adv = torch.round(atk(model, xb, yb).images * 255) / 255
            with torch.no_grad():
                right += int((model(adv).argmax(1) == yb).sum())
        out[name] = right / max(1, len(x))
    return out


def _template(ds: FaceDataset, n: int = 200, seed: int = 0) -> list[list[float]]:
    """The crop convention: mean MTCNN landmarks on the training crops, as fractions of (W, H).

    MTCNN on 200 crops takes 10-30 s on a CPU, so the result is kept for the process, keyed
    by the crops' content (several trainings on one dataset, e.g. its subsets, pay once).
    """
    from deid.align import estimate_template, template_detector

    rng = np.random.default_rng(seed)
    idx = rng.choice(ds.train, size=min(n, len(ds.train)), replace=False)
    crops = np.ascontiguousarray(ds.images[idx])
    key = hashlib.sha1(crops.tobytes() + str(crops.shape).encode()).hexdigest()
    if key in _TEMPLATES:
        # Building MTCNN's networks draws from torch's RNG before the classifier is
        # initialised; build them on a cache hit too, so a recipe gives the same weights.
        template_detector()
        return _TEMPLATES[key]
    _TEMPLATES[key] = estimate_template(crops).tolist()
    return _TEMPLATES[key]


_TEMPLATES: dict[str, list[list[float]]] = {}


def train_classifier(
    preset: str,
    out: Path,
    data: Path | None = None,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    split: str = "random",
    command: str | None = None,
    progress: bool = True,
    adversarial: Adversarial | None = None,
    subset: tuple[int, int] | None = None,
    min_std: float | None = None,
) -> tuple[FaceClassifier, dict[str, Any]]:
    """Train a preset, evaluate on the held-out split, save the checkpoint to ``out``.

    Args:
        adversarial: adversarial training (see :class:`Adversarial`); ``None``: clean.
            With it, the held-out accuracy under one-step FGSM and 10-step I-FGSM at the
            training eps is measured and recorded too (``accuracy["under_attack"]``).
        subset: ``(i, n)``: train on part i of n disjoint, per-identity stratified parts of
            the training split (the held-out split stays the same).
        min_std: per-image normalisation only: floor each image's std at this value (the
            recipe's own floor, if any, otherwise).

    Returns the classifier (eval mode) and its held-out metrics.
    """
    r = _recipe(preset, epochs, min_std)
    out = Path(out)
    check_writes(
        [("dataset", dataset_file(r.dataset, data, r.resolution))],  # type: ignore[arg-type]
        [Artefact("checkpoint", out), Artefact("checkpoint metadata", out.with_suffix(".json"))],
    )
    seed_everything(seed)
    dev = torch.device(device)
    ds, xtr, ytr, xte, yte = _training_data(r, data, split, subset)
    meta = ClassifierMeta(
        arch=r.arch,
        arch_params=r.arch_params,
        input_size=tuple(r.input_size),
        channels=ds.channels,
        norm=_normalisation(r, xtr),
        class_names=ds.class_names,
        template=_template(ds),
        dataset=ds.name,
        split=ds.split,
        command=command or " ".join(["deid", *map(shlex.quote, sys.argv[1:])]),
        training=_training_record(preset, r, seed, len(xtr), subset, adversarial),
    )
    net = build_net(r.arch, r.arch_params, ds.channels, r.input_size, ds.num_classes)
    model = FaceClassifier(net, meta).to(dev)
    ema = copy.deepcopy(model).eval() if r.ema else None
    t0 = time.time()
    _fit(model, ema, r, xtr, ytr, seed, adversarial, progress, desc=f"train {preset}")
    final = ema if ema is not None else model
    final.eval()
    metrics = evaluate(final, xte, yte)
    metrics["train_seconds"] = round(time.time() - t0, 1)
    if ema is not None:
        metrics["raw_top1"] = evaluate(model, xte, yte)["top1"]
    if adversarial is not None:
        metrics["under_attack"] = accuracy_under_attack(final, xte, yte, adversarial.eps)
    final.meta.accuracy = {**metrics, "split": ds.split}
    final.cpu().save(out)
    log.info(
        "%s: held-out top-1 %.4f top-5 %.4f (n=%d) -> %s",
        preset,
        metrics["top1"],
        metrics["top5"],
        metrics["n"],
        out,
    )
    return final, metrics


def _recipe(preset: str, epochs: int | None, min_std: float | None) -> Recipe:
    """A copy of the preset's recipe with ``epochs`` and ``min_std`` applied."""
    if preset not in RECIPES:
        raise ValueError(f"unknown preset {preset!r}; available: {sorted(RECIPES)}")
    r = copy.deepcopy(RECIPES[preset])
    if epochs is not None:
        r.epochs = epochs
    if min_std is not None:
        if r.norm != "per_image" or not 0.0 < min_std <= 1.0:
            raise ConfigError(
                f"min_std {min_std}: expected a value in (0, 1] for a per-image normalised "
                f"preset ({preset} normalises by {r.norm})"
            )
        r.min_std = min_std
    return r


def _training_data(
    r: Recipe, data: Path | None, split: str, subset: tuple[int, int] | None
) -> tuple[FaceDataset, Tensor, Tensor, Tensor, Tensor]:
    """The recipe's dataset, its training images (the subset's part, resized to the
    recipe's input size) and labels, and its held-out images and labels."""
    if r.dataset == "yaleb":
        ds = load_yaleb(data, resolution=r.resolution, split=split)  # type: ignore[arg-type]
    else:
        ds = load_celeba(data)
    xtr, ytr = ds.tensors("train")
    xte, yte = ds.tensors("test")
    if subset is not None:
        keep = subset_indices(ytr.numpy(), subset[0], subset[1])
        xtr, ytr = xtr[keep], ytr[keep]
    if tuple(xtr.shape[-2:]) != tuple(r.input_size):
        xtr = F.interpolate(
            xtr, size=r.input_size, mode="bilinear", antialias=True, align_corners=False
        )
    return ds, xtr, ytr, xte, yte


def _training_record(
    preset: str,
    r: Recipe,
    seed: int,
    n_train: int,
    subset: tuple[int, int] | None,
    adversarial: Adversarial | None,
) -> dict[str, Any]:
    """How the classifier was trained (the checkpoint's ``training`` metadata)."""
    return {
        "preset": preset,
        "epochs": r.epochs,
        "seed": seed,
        "batch_size": r.batch_size,
        "optimizer": r.optimizer,
        "lr": r.lr,
        "weight_decay": r.weight_decay,
        "label_smoothing": r.label_smoothing,
        "ema": r.ema,
        "aug": r.aug,
        "n_train": n_train,
        "torch": torch.__version__,
        **({"subset": f"{subset[0]}/{subset[1]}"} if subset is not None else {}),
        **({"adversarial": adversarial.describe()} if adversarial is not None else {}),
    }


def _normalisation(r: Recipe, xtr: Tensor) -> dict[str, Any]:
    """The classifier's input normalisation: per-channel statistics of the training images,
    or per image (with the recipe's std floor)."""
    if r.norm == "channel":
        return {
            "kind": "channel",
            "mean": xtr.mean((0, 2, 3)).tolist(),
            "std": xtr.std((0, 2, 3)).tolist(),
        }
    norm: dict[str, Any] = {"kind": "per_image"}
    if r.min_std is not None:
        norm["min_std"] = r.min_std
    return norm


def _fit(
    model: FaceClassifier,
    ema: FaceClassifier | None,
    r: Recipe,
    xtr: Tensor,
    ytr: Tensor,
    seed: int,
    adversarial: Adversarial | None,
    progress: bool,
    desc: str,
) -> None:
    """The training loop: ``r.epochs`` epochs of shuffled, augmented minibatches, the
    learning rate warmed up then cosine-annealed, ``ema`` (if any) following the weights."""
    dev = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    if r.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=r.lr, momentum=0.9, nesterov=True, weight_decay=r.weight_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / r.batch_size)
    total = r.epochs * steps_per_epoch
    warm = r.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return r.lr * (step + 1) / warm
        return 0.5 * r.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    g = torch.Generator().manual_seed(seed)
    step = 0
    bar = tqdm(range(r.epochs), desc=desc, unit="epoch", disable=not progress)
    for _epoch in bar:
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        run_loss = run_acc = 0.0
        for i in range(0, len(xtr), r.batch_size):
            idx = perm[i : i + r.batch_size]
            if len(idx) < 2:
                continue
            xb = augment(xtr[idx].to(dev), r.aug, g)
            yb = ytr[idx].to(dev)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss, logits = training_loss(model, xb, yb, r.label_smoothing, adversarial)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if ema is not None:
                _ema_update(ema, model, min(r.ema, (1 + step) / (10 + step)))
            run_loss += loss.item() * len(idx)
            run_acc += float((logits.detach().argmax(1) == yb).sum())
        bar.set_postfix(loss=f"{run_loss / len(xtr):.3f}", train_acc=f"{run_acc / len(xtr):.3f}")


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for float tensors; others copied."""
    for pe, pm in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if pe.dtype.is_floating_point:
            pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        else:
            pe.copy_(pm)
