"""Training of the identity classifiers (``deid train``).

Two presets, each a complete recipe: ``yaleb-mlp`` (the seed's MLP on grayscale Extended
Yale B) and ``celeba-cnn`` (a small ResNet on RGB CelebA identities). Augmentation runs
batched on tensors, so a CPU keeps up.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from deid.data import FaceDataset, load_celeba, load_yaleb
from deid.models.classifier import ClassifierMeta, FaceClassifier
from deid.models.nets import build_net

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """A training preset."""

    dataset: str
    arch: str
    arch_params: dict[str, Any]
    input_size: tuple[int, int]
    norm: str  # "per_image" | "channel"
    epochs: int
    batch_size: int
    optimizer: str  # "adamw" | "sgd"
    lr: float
    weight_decay: float
    label_smoothing: float
    warmup_epochs: int = 2
    ema: float = 0.0
    aug: dict[str, float] = field(default_factory=dict)
    resolution: str = "48x42"  # Yale B only: which shared file to read


RECIPES: dict[str, Recipe] = {
    "yaleb-mlp": Recipe(
        dataset="yaleb",
        arch="mlp",
        arch_params={"hidden": [256], "dropout": 0.2},
        input_size=(48, 42),
        norm="per_image",
        epochs=60,
        batch_size=64,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=1e-4,
        label_smoothing=0.3,
        aug={"brightness": 0.4, "gamma": 0.4, "noise": 0.03},
    ),
    "celeba-cnn": Recipe(
        dataset="celeba",
        arch="resnet",
        arch_params={
            "widths": [32, 64, 128, 256],
            "blocks": [2, 2, 2, 1],
            "dropout": 0.3,
            "stem_stride": 2,
        },
        input_size=(64, 64),
        norm="channel",
        epochs=80,
        batch_size=64,
        optimizer="sgd",
        lr=0.1,
        weight_decay=5e-4,
        label_smoothing=0.1,
        warmup_epochs=3,
        ema=0.999,
        aug={
            "brightness": 0.3,
            "contrast": 0.3,
            "saturation": 0.3,
            "gray": 0.1,
            "flip": 0.5,
            "shift": 0.08,
            "rotate": 12.0,
            "scale": 0.12,
            "erase": 0.3,
            "noise": 0.02,
        },
    ),
}


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


def _template(ds: FaceDataset, n: int = 200, seed: int = 0) -> list[list[float]]:
    """The crop convention: mean MTCNN landmarks on the training crops, as fractions of (W, H)."""
    from deid.align import estimate_template

    rng = np.random.default_rng(seed)
    idx = rng.choice(ds.train, size=min(n, len(ds.train)), replace=False)
    return estimate_template(ds.images[idx]).tolist()


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
) -> tuple[FaceClassifier, dict[str, Any]]:
    """Train a preset, evaluate on the held-out split, save the checkpoint to ``out``.

    Returns the classifier (eval mode) and its held-out metrics.
    """
    if preset not in RECIPES:
        raise ValueError(f"unknown preset {preset!r}; available: {sorted(RECIPES)}")
    r = copy.deepcopy(RECIPES[preset])
    if epochs is not None:
        r.epochs = epochs
    seed_everything(seed)
    dev = torch.device(device)
    if r.dataset == "yaleb":
        ds = load_yaleb(data, resolution=r.resolution, split=split)  # type: ignore[arg-type]
    else:
        ds = load_celeba(data)
    xtr, ytr = ds.tensors("train")
    xte, yte = ds.tensors("test")
    if tuple(xtr.shape[-2:]) != tuple(r.input_size):
        xtr = F.interpolate(
            xtr, size=r.input_size, mode="bilinear", antialias=True, align_corners=False
        )
    norm: dict[str, Any]
    if r.norm == "channel":
        norm = {
            "kind": "channel",
            "mean": xtr.mean((0, 2, 3)).tolist(),
            "std": xtr.std((0, 2, 3)).tolist(),
        }
    else:
        norm = {"kind": "per_image"}
    meta = ClassifierMeta(
        arch=r.arch,
        arch_params=r.arch_params,
        input_size=tuple(r.input_size),
        channels=ds.channels,
        norm=norm,
        class_names=ds.class_names,
        template=_template(ds),
        dataset=ds.name,
        split=ds.split,
        command=command or " ".join(["deid", *map(shlex.quote, sys.argv[1:])]),
        training={
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
            "n_train": len(xtr),
            "torch": torch.__version__,
        },
    )
    net = build_net(r.arch, r.arch_params, ds.channels, r.input_size, ds.num_classes)
    model = FaceClassifier(net, meta).to(dev)
    ema = copy.deepcopy(model).eval() if r.ema else None
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
    t0 = time.time()
    bar = tqdm(range(r.epochs), desc=f"train {preset}", unit="epoch", disable=not progress)
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
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=r.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if ema is not None:
                with torch.no_grad():
                    d = min(r.ema, (1 + step) / (10 + step))
                    for pe, pm in zip(
                        ema.state_dict().values(), model.state_dict().values(), strict=True
                    ):
                        if pe.dtype.is_floating_point:
                            pe.mul_(d).add_(pm.detach(), alpha=1 - d)
                        else:
                            pe.copy_(pm)
            run_loss += loss.item() * len(idx)
            run_acc += float((logits.argmax(1) == yb).sum())
        bar.set_postfix(loss=f"{run_loss / len(xtr):.3f}", train_acc=f"{run_acc / len(xtr):.3f}")
    final = ema if ema is not None else model
    final.eval()
    metrics = evaluate(final, xte, yte)
    metrics["train_seconds"] = round(time.time() - t0, 1)
    if ema is not None:
        metrics["raw_top1"] = evaluate(model, xte, yte)["top1"]
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
