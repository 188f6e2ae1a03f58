"""Training of the face-replacement generator (``deid train facegan``).

The seed's minibatch GAN algorithm (k discriminator steps per generator step), with what
data-efficient GAN training does for a small set (4k CelebA faces): DiffAugment for both
players, spectral norm in the discriminator, a lazy R1 penalty on real crops, an
exponential moving average of the generator's weights, hinge losses. The generator also
minimises an L1 reconstruction of the ring around the region (its output must meet the
context where the soft mask blends them) and a mode-seeking term (Mao et al. 2019: two
latents for one context must give two faces), so the latent, kept per track in a video,
decides the new face:

    L_D = E[relu(1 - D(A(x), m))] + E[relu(1 + D(A(x~), m))] + gamma/2 E[|grad D(A(x))|^2]
    L_G = -E[D(A(x~), m)] + lambda_ring E[|G - x| (1 - m)] + lambda_ms relu(1 - r / r0),
    r = |G1 - G2|_m / |z1 - z2|

with x~ = m G(x, m, z) + (1 - m) x, A the augmentation, m a jittered elliptical mask.

With ``identity_weight`` > 0 (meant for a fine-tune from ``init``) the generator also
minimises an identity term on deid's own CelebA CNN, so that the new face is as far from
the original as another person's is:

    L_G += lambda_id E[relu(cos(E(S(x~)), E(S(x))) - c0)]

with E the CNN's embedding (its penultimate layer, :meth:`FaceClassifier.embed`), S one
random downscale of the batch to 18-64 px and back with a shift of up to 2 px (faces in
drone frames are small: the change must survive that), and c0 the mean cosine of two
different people's faces in E, measured on the training faces before the first step. The
independent judge is never part of training.

Data: the CelebA subset's training split, minus ``holdout_identities`` identities held out
entirely (their faces are real people the generator never saw: the reference for "no real
person", see :mod:`deid.eval.replace`); the file's test split is never used.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from deid.data import load_dataset
from deid.data.datasets import FaceDataset, dataset_file
from deid.errors import ConfigError
from deid.generators.facegan import (
    FaceDiscriminator,
    FaceGANMeta,
    FaceGenerator,
    diff_augment,
    ellipse_mask,
)
from deid.generators.train_advgan import write_sheet
from deid.io import Artefact, check_writes
from deid.models import FaceClassifier, load_classifier
from deid.models.train import seed_everything

log = logging.getLogger(__name__)


def holdout_split(ds: FaceDataset, n_identities: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out identity labels): the train split minus every image of
    ``n_identities`` identities drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    held = np.sort(rng.permutation(ds.num_classes)[:n_identities])
    train = ds.train[~np.isin(ds.labels[ds.train], held)]
    return train, held


def train_facegan(
    out: Path,
    *,
    data: Path | None = None,
    epochs: int = 40,
    batch_size: int = 32,
    width: int = 24,
    z_dim: int = 64,
    region: tuple[float, float, float, float] = (0.5, 0.56, 0.40, 0.46),
    holdout_identities: int = 25,
    seed: int = 0,
    device: str = "cpu",
    command: str = "",
    samples_dir: Path | None = None,
    max_seconds: float | None = None,
    limit: int | None = None,
    init: Path | None = None,
    identity_weight: float = 0.0,
    d_warmup: int = 300,
    d_width: int | None = None,
    cutout: float = 0.5,
    r1_gamma: float = 1.0,
) -> tuple[FaceGenerator, dict[str, Any]]:
    """Train a face generator on the CelebA subset and write it to ``out``.

    Args:
        epochs: passes over the training faces.
        region: the replaced ellipse (cx, cy, rx, ry) as fractions of the crop.
        holdout_identities: identities kept out of training entirely.
        samples_dir: write a sheet of generated faces (composites) every few epochs.
        max_seconds: stop after this long (at an epoch's end), keeping what was learned.
        limit: use only this many training faces (tests).
        init: start from this generator checkpoint (its sizes, region and metadata are kept;
            ``width``, ``z_dim`` and ``region`` are ignored): a fine-tune, at half the
            generator's learning rate, after ``d_warmup`` steps that train a new
            discriminator alone against it.
        identity_weight: lambda_id of the identity term (0: none).
        d_warmup: see ``init``.
        d_width: the discriminator's first-layer channels (default: the generator's width).
        cutout: DiffAugment's cutout square, as a fraction of the crop (0: none). Half the
            crop (the first stage's) often hides the whole new face from the discriminator.
        r1_gamma: weight of the lazy R1 penalty (0: none). With spectral norm, DiffAugment
            and gamma 1 (the first stage's) the discriminator stayed at chance (hinge loss
            2.0 from the first epoch to the last): it gave the generator almost nothing.

    Returns:
        the generator (EMA weights) and its figures.
    """
    if not 0.0 <= cutout < 1.0:
        raise ConfigError(f"cutout must be a fraction of the crop in [0, 1), got {cutout}")
    if r1_gamma < 0 or identity_weight < 0:
        raise ConfigError(
            f"r1_gamma and identity_weight must be >= 0, got {r1_gamma} and {identity_weight}"
        )
    if d_width is not None and d_width < 1:
        raise ConfigError(f"the discriminator's width must be >= 1, got {d_width}")
    check_writes(
        [("dataset", dataset_file("celeba", data)), ("generator to fine-tune", init)],
        [
            Artefact("checkpoint", out),
            Artefact("checkpoint metadata", out.with_suffix(".json")),
            Artefact("contact sheets", samples_dir, folder=True) if samples_dir else None,
        ],
    )
    seed_everything(seed)
    dev = torch.device(device)
    ds = load_dataset("celeba", data)
    first = FaceGenerator.load(init, dev) if init is not None else None
    if first is not None:  # the same identities stay out as in the generator's first stage
        held = np.asarray(first.meta.data.get("holdout_identities", []), dtype=np.int64)
        train_idx = ds.train[~np.isin(ds.labels[ds.train], held)]
    else:
        train_idx, held = holdout_split(ds, holdout_identities, seed)
    if limit:
        train_idx = train_idx[:limit]
    x_all, y_all = ds.tensors_at(train_idx)
    # (loaded for both paths: building the classifier draws from the seeded RNG, which the
    # networks made after it then start from, so moving it would change what a command makes)
    clf_template = load_classifier("celeba-cnn").meta.template
    data_meta = {
        "dataset": "celeba",
        "file": ds.split.get("file", ""),
        "split": "the file's train split (its test split is never used)",
        "train_faces": len(train_idx),
        "holdout_identities": [int(v) for v in held],
        "holdout_seed": seed,
    }
    if first is not None:
        meta = copy.deepcopy(first.meta)
        data_meta["holdout_seed"] = first.meta.data.get("holdout_seed", seed)
        meta.data = {**data_meta, "init": {"file": Path(init).name, "command": meta.command}}
        meta.command = command
        first_stage = {"training": meta.training, "figures": meta.figures}
        g = first.train()
        g.meta = meta
    else:
        meta = FaceGANMeta(
            size=tuple(x_all.shape[-2:]),  # type: ignore[arg-type]
            template=[[float(v) for v in p] for p in clf_template],
            region=region,
            z_dim=z_dim,
            width=width,
            data=data_meta,
            command=command,
        )
        first_stage = None
        g = FaceGenerator(meta).to(dev)
    region, z_dim, width = meta.region, meta.z_dim, meta.width
    d = FaceDiscriminator(d_width or width).to(dev)
    ema = copy.deepcopy(g).eval()
    lr_g = 2e-4 if first is None else 1e-4
    opt_g = torch.optim.Adam(g.parameters(), lr=lr_g, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.0, 0.99))
    gen = torch.Generator().manual_seed(seed)
    identity = None
    if identity_weight > 0:
        identity = IdentityTerm(load_classifier("celeba-cnn", dev), x_all, y_all, gen)
    hp = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr_g,
        "lr_d": 2e-4,
        "betas": [0.0, 0.99],
        "k_discriminator_steps": 1,
        "r1_gamma": r1_gamma,
        "r1_every": 4,
        "lambda_ring": 10.0,
        "lambda_ms": 1.0,
        "ms_target": 0.06,
        "ms_scale": "4x average-pooled outputs",
        "ema": 0.999,
        "mask_jitter": 0.12,
        "augment": f"DiffAugment: colour, translation 1/8, cutout {cutout:g}; horizontal flips",
        "d_width": d_width or width,
        "seed": seed,
    }
    if first is not None:
        hp["discriminator_warmup_steps"] = d_warmup
        hp["first_stage"] = first_stage
    if identity is not None:
        hp["lambda_id"] = identity_weight
        hp["id_margin"] = round(identity.margin, 4)
        hp["id_network"] = "deid's celeba-cnn, penultimate layer"
        hp["id_transform"] = "one random downscale to 18-64 px and back, shift up to 2 px"
    half = batch_size // 2
    steps_per_epoch = max(1, len(x_all) // half)
    fixed = _fixed_batch(x_all, meta, 16, seed)
    t0 = time.time()
    last: dict[str, float] = {}
    step = 0
    done_epochs = 0
    if first is not None:
        _warm_up(d, opt_d, g, x_all, meta, half, d_warmup, cutout, gen, dev)
        log.info("discriminator warmed up (%.0f s)", time.time() - t0)
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"facegan {epoch + 1}/{epochs}", leave=False)
        for i in bar:
            idx = order[i * half : (i + 1) * half]
            xb = x_all[idx]
            flip = torch.rand(len(xb), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            x = torch.cat([xb, xb]).to(dev)  # two latents per context (mode seeking)
            m1 = ellipse_mask(len(xb), meta.size, region, meta.feather, 0.12, gen)
            m = torch.cat([m1, m1]).to(dev)
            z = torch.randn(len(x), z_dim, generator=gen).to(dev)
            # -- discriminator
            r1 = r1_gamma if step % hp["r1_every"] == 0 else 0.0
            loss_d = _d_step(d, opt_d, g, x, m, z, cutout, gen, r1)
            # -- generator
            gx = g(x, m, z)
            fake = m * gx + (1 - m) * x
            fake_a, fake_m = diff_augment(fake, m, gen, cutout)
            adv = -d(fake_a, fake_m).mean()
            ring = ((gx - x).abs() * (1 - m)).mean() / (1 - m).mean().clamp_min(1e-6)
            # at a quarter of the resolution: the latent must change the face's structure,
            # which pixel noise cannot fake
            mm = F.avg_pool2d(m1.to(dev), 4)
            g4 = F.avg_pool2d(gx, 4)
            lz = ((g4[:half] - g4[half:]).abs() * mm).sum() / (3 * mm.sum()).clamp_min(1e-6)
            lz = lz / (z[:half] - z[half:]).abs().mean()
            ms = F.relu(hp["ms_target"] - lz) / hp["ms_target"]
            loss_g = adv + hp["lambda_ring"] * ring + hp["lambda_ms"] * ms
            cos = None
            if identity is not None:
                cos = identity.cosine(x, fake, gen)
                loss_g = loss_g + identity_weight * F.relu(cos - identity.margin).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            with torch.no_grad():
                for pe, pg in zip(ema.parameters(), g.parameters(), strict=True):
                    pe.lerp_(pg, 1 - hp["ema"])
                for be, bg in zip(ema.buffers(), g.buffers(), strict=True):
                    be.copy_(bg)
            step += 1
            last = {
                "d": float(loss_d.detach()),
                "g_adv": float(adv.detach()),
                "ring_l1": float(ring.detach()),
                "ms_ratio": float(lz.detach()),
            }
            if cos is not None:
                last["id_cosine"] = float(cos.detach().mean())
            bar.set_postfix({k: f"{v:.3f}" for k, v in last.items()})
        done_epochs = epoch + 1
        if samples_dir is not None and (done_epochs % 5 == 0 or done_epochs == epochs):
            write_sheet(samples_dir / f"epoch-{done_epochs:03d}.png", _samples(ema, fixed))
        ema.meta.training = {
            **hp,
            "epochs_done": done_epochs,
            "steps": step,
            "seconds": round(time.time() - t0, 1),
            "last_losses": last,
        }
        ema.save(out)  # a checkpoint every epoch: an interrupted run keeps what it learned
        log.info("epoch %d: %s (%.0f s)", done_epochs, last, time.time() - t0)
        if max_seconds is not None and time.time() - t0 > max_seconds:
            log.info("stopping after %d epochs: --max-seconds %s reached", done_epochs, max_seconds)
            break
    figures = own_classifier_figures(ema, ds, held, seed)
    ema.meta.figures = figures
    ema.meta.training = {**ema.meta.training, "epochs_done": done_epochs}
    ema.save(out)
    return ema, figures


def _warm_up(
    d: FaceDiscriminator,
    opt_d: torch.optim.Optimizer,
    g: FaceGenerator,
    x_all: Tensor,
    meta: FaceGANMeta,
    n: int,
    steps: int,
    cutout: float,
    gen: torch.Generator,
    dev: torch.device,
) -> None:
    """Train a new discriminator alone against the (frozen) generator to fine-tune."""
    for _ in range(steps):
        x = x_all[torch.randint(len(x_all), (n,), generator=gen)].to(dev)
        m = ellipse_mask(n, meta.size, meta.region, meta.feather, 0.12, gen).to(dev)
        z = torch.randn(n, meta.z_dim, generator=gen).to(dev)
        _d_step(d, opt_d, g, x, m, z, cutout, gen)


def _d_step(
    d: FaceDiscriminator,
    opt_d: torch.optim.Optimizer,
    g: FaceGenerator,
    x: Tensor,
    m: Tensor,
    z: Tensor,
    cutout: float,
    gen: torch.Generator,
    r1_gamma: float = 0.0,
) -> Tensor:
    """One discriminator step (hinge loss on augmented real crops and composites of the
    generator's faces; with ``r1_gamma`` > 0 the lazy R1 penalty, applied every 4 steps, so
    scaled by 4). Returns the loss."""
    with torch.no_grad():
        fake = m * g(x, m, z) + (1 - m) * x
    real_a, real_m = diff_augment(x, m, gen, cutout)
    fake_a, fake_m = diff_augment(fake, m, gen, cutout)
    if r1_gamma > 0:
        real_a = real_a.detach().requires_grad_(True)
    d_real = d(real_a, real_m)
    loss = F.relu(1 - d_real).mean() + F.relu(1 + d(fake_a, fake_m)).mean()
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(d_real.sum(), real_a, create_graph=True)
        loss = loss + r1_gamma / 2 * grad.pow(2).flatten(1).sum(1).mean() * 4
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss.detach()


class IdentityTerm:
    """How much a replaced face is still its original for deid's own CelebA CNN: the cosine of
    their embeddings after one random downscale (18-64 px and back) and shift of both, and
    the margin it is pushed under: the mean cosine of two different people's training faces.

    Args:
        cnn: the CelebA classifier (frozen here).
        x, y: training faces and their identities (the margin is measured on 256 of them).
        gen: the training's random generator.
    """

    def __init__(self, cnn: FaceClassifier, x: Tensor, y: Tensor, gen: torch.Generator) -> None:
        self.cnn = cnn.eval()
        for p in self.cnn.parameters():
            p.requires_grad_(False)
        dev = next(self.cnn.parameters()).device
        idx = torch.randperm(len(x), generator=gen)[:256]
        with torch.no_grad():
            e = self.embed(x[idx].to(dev))
        self.margin = two_people_cosine(e, y[idx].to(dev))

    def embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.cnn.embed(x), dim=1)

    def cosine(self, x: Tensor, fake: Tensor, gen: torch.Generator) -> Tensor:
        """(N,) cosine of each replaced face's embedding with its original's."""
        both = small_and_shifted(torch.cat([x, fake]), gen)
        with torch.no_grad():
            e0 = self.embed(both[: len(x)])
        return (self.embed(both[len(x) :]) * e0).sum(1)


def two_people_cosine(e: Tensor, y: Tensor) -> float:
    """Mean cosine of unit embeddings ``e`` of two different people: each face against the
    one before it in the batch, where their identities ``y`` differ."""
    other = torch.roll(torch.arange(len(e), device=e.device), 1)
    return float((e * e[other]).sum(1)[y != y[other]].mean())


def small_and_shifted(x: Tensor, gen: torch.Generator) -> Tensor:
    """The batch downscaled to one random size in 18..64 px and back (bilinear), shifted by up
    to 2 px: what a face of a drone frame keeps."""
    h, w = x.shape[-2:]
    s = int(torch.randint(18, h + 1, (1,), generator=gen))
    if s < h:
        x = F.interpolate(x, size=(s, s * w // h), mode="bilinear", antialias=True)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(x, (dy, dx), (2, 3))


def _fixed_batch(x: Tensor, meta: FaceGANMeta, n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(x), generator=g)[: n // 2]
    ctx = torch.cat([x[idx], x[idx]])
    return ctx, torch.randn(len(ctx), meta.z_dim, generator=g)


@torch.no_grad()
def _samples(g: FaceGenerator, fixed: tuple[Tensor, Tensor]) -> Tensor:
    """Composites of fixed contexts with two latents each (rows: latent 1, latent 2)."""
    dev = next(g.parameters()).device
    x, z = fixed
    x = x.to(dev)
    return g.composite(x, g.mask(len(x), dev), z.to(dev)).cpu()


@torch.no_grad()
def own_classifier_figures(
    g: FaceGenerator, ds: FaceDataset, held: np.ndarray, seed: int, n: int = 300
) -> dict[str, Any]:
    """What deid's own CelebA classifier sees in replaced faces of the held-out test split:
    the share it still gives the original identity (clean: its test accuracy) and the
    generator's ring error. The independent judge's figures are made by
    ``deid eval replace`` (training code never uses the judge)."""
    clf = load_classifier("celeba-cnn")
    dev = next(g.parameters()).device
    clf = clf.to(dev)
    rng = np.random.default_rng(seed)
    test = ds.test[~np.isin(ds.labels[ds.test], held)]
    idx = np.sort(rng.permutation(test)[: min(n, len(test))])
    x, y = ds.tensors_at(idx)
    x, y = x.to(dev), y.to(dev)
    z = torch.randn(len(x), g.meta.z_dim, generator=torch.Generator().manual_seed(seed)).to(dev)
    m = g.mask(len(x), dev)
    out = g(x, m, z)
    xr = m * out + (1 - m) * x
    xr = torch.round(xr * 255) / 255
    clean = clf(x).argmax(1) == y
    after = clf(xr).argmax(1) == y
    ring = float(((out - x).abs() * (1 - m)).mean() / (1 - m).mean())
    e, er = F.normalize(clf.embed(x), dim=1), F.normalize(clf.embed(xr), dim=1)
    return {
        "n": len(idx),
        "own_classifier_clean_accuracy": round(float(clean.float().mean()), 4),
        "own_classifier_still_recognised": round(float(after.float().mean()), 4),
        "own_embedding_cosine_to_original": round(float((e * er).sum(1).mean()), 4),
        "own_embedding_cosine_two_people": round(two_people_cosine(e, y), 4),
        "ring_l1": round(ring, 4),
        "data": "CelebA test split of the identities the generator trained on",
    }


def region_default() -> tuple[float, float, float, float]:
    """The replaced region of the shipped generator (see deid/weights/README.md)."""
    return FaceGANMeta().region


__all__ = ["holdout_split", "own_classifier_figures", "region_default", "train_facegan"]
