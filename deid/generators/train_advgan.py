"""Training of AdvGAN generators (``deid train advgan --classifier NAME``).

Against a frozen classifier, on its own training split only (the held-out split measures
the result), the generator G and a discriminator D play the seed's minibatch game (k
discriminator steps per generator step) while G also minimises a targeted adversarial loss:

    L_G = E[ max(max_{i != t} Z_i(T(x + G(x, t))) - Z_t(T(x + G(x, t))) + kappa, 0) ]
          + lambda_gan * E[ softplus(-D(x + G(x, t))) ]
          + lambda_hinge * E[ max(rms(G(x, t)) - hinge * eps, 0) ]

with t drawn uniformly among the classes other than x's, Z the classifier's logits, and T
the identity with 8-bit rounding (straight-through), a random transformation of
:mod:`deid.attacks.eot` (H.264-like quantisation, rescaling, blur, shifts, noise) or a real
H.264 round trip (:mod:`deid.attacks.codec`, straight-through), so the perturbation it
learns survives encoding. D sees real faces against perturbed ones
(non-saturating loss, spectral norm).
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from deid.attacks.advgan import perturbation
from deid.attacks.base import predict, quantize8, to_uint8
from deid.attacks.codec import h264_ste
from deid.attacks.eot import EOTConfig, Transforms, round_ste
from deid.data import load_dataset
from deid.data.datasets import dataset_file
from deid.errors import ConfigError
from deid.generators.advgan import (
    AdvGenerator,
    Discriminator,
    GeneratorMeta,
    classifier_fingerprint,
)
from deid.generators.recipes import AdvGANRecipe
from deid.io import Artefact, check_writes, write_image
from deid.models import SHIPPED, load_classifier, shipped_path
from deid.models.classifier import FaceClassifier
from deid.models.precision import resolve_precision
from deid.models.train import augment, seed_everything
from deid.targets import choose_targets

log = logging.getLogger(__name__)

AUG = {"brightness": 0.15, "contrast": 0.15, "shift": 0.03}


def train_advgan(
    classifier: str,
    out: Path,
    recipe: AdvGANRecipe,
    data: Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    command: str | None = None,
    progress: bool = True,
    samples_dir: Path | None = None,
    init: Path | None = None,
) -> tuple[AdvGenerator, dict[str, Any]]:
    """Train a generator against ``classifier``, measure it on the held-out split, save it.

    ``init``: start from this generator checkpoint (a fine-tune: a fresh learning-rate
    cycle of ``recipe.epochs``); its network must be the recipe's and it must have been
    trained against the same classifier weights. Its file name, command and figures are kept
    in the new checkpoint's ``training["init"]``.

    Returns the generator (eval mode) and its held-out figures (targeted success of the
    generator alone after 8-bit rounding, PSNR, L-inf).
    """
    out = Path(out)
    samples_dir = samples_dir or out.with_name(out.stem + ".samples")
    clf_path = shipped_path(classifier) if classifier in SHIPPED else Path(classifier)
    dev = torch.device(device)
    clf = load_classifier(classifier, dev).eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    clf.set_gradient_precision(resolve_precision(recipe.precision, dev))
    meta = clf.meta
    check_writes(
        [
            ("classifier", clf_path),
            ("dataset", dataset_file(meta.dataset, data)),
            ("generator to fine-tune", init),
        ],  # type: ignore[arg-type]
        [
            Artefact("checkpoint", out),
            Artefact("checkpoint metadata", out.with_suffix(".json")),
            Artefact("contact sheets", samples_dir, folder=True),
        ],
    )
    seed_everything(seed)
    ds = load_dataset(meta.dataset, data, meta.split)
    xtr, ytr = _sized(ds.tensors("train"), meta.input_size)
    xte, yte = _sized(ds.tensors("test"), meta.input_size)
    gmeta = GeneratorMeta(
        channels=meta.channels,
        size=tuple(meta.input_size),
        num_classes=meta.num_classes,
        eps=recipe.eps,
        width=recipe.width,
        embed=recipe.embed,
        scale=recipe.scale,
        levels=recipe.levels,
        source=recipe.source,
        own_source=recipe.own_source,
        full_maps=recipe.full_maps,
        film_all=recipe.film_all,
        classifier=str(classifier),
        fingerprint=classifier_fingerprint(clf),
        data={"dataset": ds.name, "split": ds.split, "n_train": len(xtr), "n_test": len(xte)},
        command=command or " ".join(["deid", *map(shlex.quote, sys.argv[1:])]),
        training={
            **recipe.describe(),
            "seed": seed,
            "aug": AUG if recipe.augment else {},
            "torch": torch.__version__,
        },
    )
    gen = AdvGenerator(gmeta).to(dev)
    if init is not None:
        gen.meta.training["init"] = _warm_start(gen, Path(init))
    elif recipe.zero_out:
        gen.zero_output()
    disc = Discriminator(meta.channels).to(dev)
    t0 = time.time()
    _fit(gen, disc, clf, xtr, ytr, recipe, seed, progress, samples_dir)
    gen.eval()
    gen.round_maps()  # the figures are those of the saved weights
    figures = heldout_figures(gen, clf, xte, yte, seed)
    figures["train_seconds"] = round(time.time() - t0, 1)
    gen.meta = replace(gen.meta, figures=figures)
    gen.cpu().save(out)
    log.info(
        "advgan %s: held-out success %.4f (n=%d) -> %s",
        classifier,
        figures["success_8bit"],
        figures["n"],
        out,
    )
    return gen, figures


ARCHITECTURE = (
    "channels",
    "size",
    "num_classes",
    "eps",
    "width",
    "embed",
    "scale",
    "levels",
    "source",
    "own_source",
    "full_maps",
    "film_all",
    "fingerprint",
)


def _warm_start(gen: AdvGenerator, init: Path) -> dict[str, Any]:
    """Load ``init``'s weights into ``gen`` (same network, same classifier) and return what
    the new checkpoint records about it."""
    first = AdvGenerator.load(init, next(gen.parameters()).device)
    diff = [
        f"{k}: {getattr(first.meta, k)!r} (recipe: {getattr(gen.meta, k)!r})"
        for k in ARCHITECTURE
        if _plain(getattr(first.meta, k)) != _plain(getattr(gen.meta, k))
    ]
    if diff:
        raise ConfigError(
            f"--init {init}: expected a generator of this recipe against this classifier; "
            f"it differs in {'; '.join(diff)}"
        )
    gen.load_state_dict(first.state_dict())
    return {"file": init.name, "command": first.meta.command, "figures": first.meta.figures}


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _sized(xy: tuple[Tensor, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    x, y = xy
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return x, y


def other_targets(y: Tensor, k: int, g: torch.Generator) -> Tensor:
    """(N,) targets drawn uniformly among the k - 1 classes other than ``y``."""
    return (y + torch.randint(1, k, y.shape, generator=g).to(y.device)) % k


def margin_loss(logits: Tensor, t: Tensor, kappa: float) -> Tensor:
    """(M,) C&W's targeted margin ``max(max_{i != t} Z_i - Z_t + kappa, 0)``."""
    zt = logits.gather(1, t[:, None]).squeeze(1)
    other = logits.scatter(1, t[:, None], float("-inf")).amax(1)
    return F.relu(other - zt + kappa)


def one_cycle(
    opt: torch.optim.Optimizer, r: AdvGANRecipe, total_steps: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    """The generator's one-cycle schedule: each group's learning rate peaks at the rate the
    group was built with after 10% of the steps and decays to 1/10^4 of it (cosine); from
    1/25 of it with ``r.warmup``, else at the peak from the start; Adam's beta1 cycles
    (0.95 -> 0.85 -> 0.95) with ``r.cycle_momentum``, else it stays the optimiser's."""
    return torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=[g["lr"] for g in opt.param_groups],
        total_steps=total_steps,
        pct_start=0.1,
        div_factor=25.0 if r.warmup else 1.0,
        cycle_momentum=r.cycle_momentum,
    )


def _fit(
    gen: AdvGenerator,
    disc: Discriminator,
    clf: FaceClassifier,
    xtr: Tensor,
    ytr: Tensor,
    r: AdvGANRecipe,
    seed: int,
    progress: bool,
    samples_dir: Path,
) -> None:
    dev = next(gen.parameters()).device
    k = clf.num_classes
    # the per-target maps are plain pixels: they learn at a pixel-sized rate
    maps = [gen.target_map]
    ident = [p for n, p in gen.named_parameters() if n.startswith("identify.")]
    rest = [
        p for n, p in gen.named_parameters() if n != "target_map" and not n.startswith("identify.")
    ]
    groups = [{"params": rest, "lr": r.lr}, {"params": maps, "lr": r.lr_map}]
    if ident:
        groups.append({"params": ident, "lr": r.lr_identify})
    opt_g = torch.optim.Adam(groups, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=r.lr_d, betas=(0.5, 0.999))
    steps_per_epoch = math.ceil(len(xtr) / r.batch_size)
    sched = one_cycle(opt_g, r, r.epochs * steps_per_epoch)
    fast = clf.fast()
    transforms = (  # EOT's own copies besides the 8-bit one (none: the 8-bit copy alone)
        Transforms(EOTConfig(enabled=True, samples=1 + r.eot_copies, seed=seed))
        if r.eot_copies > 0
        else None
    )
    g = torch.Generator().manual_seed(seed)
    lo, hi = r.h264_crf
    step = 0
    sheet_x = xtr[torch.randperm(len(xtr), generator=g)[:16]].to(dev)
    sheet_t = other_targets(ytr[:16].to(dev), k, g)
    with torch.no_grad():
        sheet_s = clf(sheet_x).argmax(1) if gen.meta.source else None
    bar = tqdm(
        range(r.epochs),
        desc=f"train advgan vs {gen.meta.classifier}",
        unit="epoch",
        disable=not progress,
    )
    for epoch in bar:
        gen.train()
        perm = torch.randperm(len(xtr), generator=g)
        sums = {"adv": 0.0, "gan": 0.0, "d": 0.0, "id": 0.0, "ok": 0.0, "n": 0}
        for i in range(0, len(xtr), r.batch_size):
            idx = perm[i : i + r.batch_size]
            if len(idx) < 2:
                continue
            x = augment(xtr[idx].to(dev), AUG, g) if r.augment else xtr[idx].to(dev)
            y = ytr[idx].to(dev)
            with torch.no_grad():  # what the classifier sees in the clean face
                clean = clf(x).argmax(1) if gen.meta.source or gen.meta.own_source else None
            src = clean if gen.meta.source else None  # the generator's input
            own = clean if gen.meta.own_source else None  # taught to the generator's own guess
            for _ in range(r.d_steps):  # the discriminator: real faces vs perturbed ones
                with torch.no_grad():
                    fake = (x + gen(x, other_targets(y, k, g), src)).clamp(0, 1)
                ld = F.softplus(-disc(x)).mean() + F.softplus(disc(fake)).mean()
                opt_d.zero_grad(set_to_none=True)
                ld.backward()
                opt_d.step()
                sums["d"] += ld.item() * len(idx) / r.d_steps
            t = other_targets(y, k, g)
            delta = gen(x, t, src)
            xa = (x + delta).clamp(0, 1)
            copies = (
                [round_ste(xa * 255.0) / 255.0]
                + [transforms.sample(xa) for _ in range(r.eot_copies) if transforms is not None]
                + [
                    h264_ste(xa, int(torch.randint(lo, hi + 1, (), generator=g)), seed=step)
                    for _ in range(r.h264_copies)
                ]
            )
            step += 1
            logits = fast(torch.cat(copies))  # gradients only (train_ok is a rough figure)
            reps = len(copies)
            adv = margin_loss(logits, t.repeat(reps), r.kappa).mean()
            gan = F.softplus(-disc(xa)).mean() if r.lambda_gan > 0 else xa.new_zeros(())
            rms = delta.pow(2).flatten(1).mean(1).sqrt()
            hinge = F.relu(rms - r.hinge * r.eps).mean()
            loss = adv + r.lambda_gan * gan + r.lambda_hinge * hinge / r.eps
            if own is not None:  # the identity guess learns the classifier's answer
                ident = F.cross_entropy(gen.identity_logits(x), own)
                loss = loss + r.lambda_identify * ident
                sums["id"] += ident.item() * len(idx)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            sched.step()
            sums["adv"] += adv.item() * len(idx)
            sums["gan"] += gan.item() * len(idx)
            sums["ok"] += float((logits[: len(idx)].argmax(1) == t).sum())
            sums["n"] += len(idx)
        n = max(1, sums["n"])
        bar.set_postfix(
            adv=f"{sums['adv'] / n:.3f}",
            gan=f"{sums['gan'] / n:.3f}",
            d=f"{sums['d'] / n:.3f}",
            train_ok=f"{sums['ok'] / n:.3f}",
            **({"id": f"{sums['id'] / n:.3f}"} if gen.meta.own_source else {}),
        )
        if (epoch + 1) % r.sheet_every == 0 or epoch + 1 == r.epochs:
            gen.eval()
            with torch.no_grad():
                faces = (sheet_x + gen(sheet_x, sheet_t, sheet_s)).clamp(0, 1)
            write_sheet(samples_dir / f"epoch-{epoch + 1:03d}.png", faces)


def write_sheet(path: Path, faces: Tensor, cols: int = 8, scale: int = 2) -> None:
    """A PNG grid of (N, C, H, W) faces in [0, 1] (the perturbed ones: no clear original)."""
    px = to_uint8(faces.expand(-1, 3, -1, -1) if faces.shape[1] == 1 else faces)
    n, h, w, _ = px.shape
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, p in enumerate(px):
        r, c = divmod(i, cols)
        grid[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = p
    grid = np.repeat(np.repeat(grid, scale, 0), scale, 1)
    write_image(path, grid)


@torch.no_grad()
def heldout_figures(
    gen: AdvGenerator, clf: FaceClassifier, x: Tensor, y: Tensor, seed: int = 0
) -> dict[str, Any]:
    """The generator alone on held-out faces (random targets other than the clean
    prediction, seeded): targeted success after 8-bit rounding, PSNR and L-inf."""
    dev = next(gen.parameters()).device
    x = x.to(dev)
    logits = predict(clf, x)
    t = choose_targets(logits, "random", torch.Generator().manual_seed(seed)).to(dev)
    outs = []
    for i in range(0, len(x), 256):
        src = logits[i : i + 256].argmax(1) if gen.meta.source else None
        d = perturbation(gen, x[i : i + 256], t[i : i + 256], None, src)
        outs.append(quantize8((x[i : i + 256] + d).clamp(0, 1)))
    xa = torch.cat(outs)
    ok = predict(clf, xa).argmax(1) == t
    mse = (xa - x).pow(2).flatten(1).mean(1)
    return {
        "n": len(x),
        "success_8bit": round(float(ok.float().mean()), 4),
        "psnr": round(float((10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean()), 2),
        "linf_255": round(float((xa - x).abs().amax() * 255), 2),
        "targets": "random (uniform over the classes other than the clean prediction)",
    }
