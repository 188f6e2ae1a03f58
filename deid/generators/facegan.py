"""Face replacement: a context-conditioned GAN that paints a new face, of no one, into the
masked inner region of an aligned face crop.

The generator sees the aligned crop with the face region masked out (hair, background,
neck and the outline's surroundings stay), the mask, and a latent ``z``; it returns a full
crop whose masked region holds a face that fits the skin tone, lighting and pose around it
(the seed's context encoders and pix2pix; DeepPrivacy's approach to anonymisation). Since
the original inner face never reaches the network, the new face cannot carry its identity
except through what the ring around it keeps; how large the region must be for that to
stop a recognizer is measured (``deid eval replace --regions``).

The pose map DeepPrivacy adds is not needed here: every crop is aligned by its five
landmarks to the classifier's template, so eyes, nose and mouth sit at fixed places.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deid.checkpoint import JsonMeta, read_checkpoint, write_checkpoint

FORMAT = "deid-facegan/1"


@dataclass
class FaceGANMeta(JsonMeta):
    """Everything needed to rebuild a face generator and to know what it is.

    Attributes:
        size: (H, W) of the aligned crops it works on.
        template: (5, 2) landmark positions as fractions of (W, H): the alignment of its
            training data (the pipeline aligns faces to it before generating).
        region: the replaced region, an ellipse: centre (cx, cy) and radii (rx, ry) as
            fractions of the crop's (W, H).
        feather: width of the mask's soft edge, as a fraction of the crop's height.
        z_dim: size of the latent.
        width: channels of the first layer.
        data: dataset, split and the identities held out of training.
        command: the command line that made it.
        training: hyper-parameters, seed, seconds.
        figures: figures measured at the end of training.
    """

    TUPLES: ClassVar[tuple[str, ...]] = ("size", "region")

    size: tuple[int, int] = (64, 64)
    template: list[list[float]] = field(default_factory=list)
    region: tuple[float, float, float, float] = (0.5, 0.56, 0.40, 0.46)
    feather: float = 0.06
    z_dim: int = 64
    width: int = 24
    data: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def ellipse_mask(
    n: int,
    size: tuple[int, int],
    region: tuple[float, float, float, float],
    feather: float,
    jitter: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(n, 1, H, W) float soft mask, 1 inside the region's ellipse, falling to 0 over
    ``feather`` (fraction of H) outside it. ``jitter`` > 0 moves each mask's centre and
    scales its radii at random by up to that fraction (training: masks of imperfect
    alignments)."""
    h, w = size
    cx, cy, rx, ry = (torch.full((n, 1, 1), float(v)) for v in region)
    if jitter > 0:
        r = torch.rand(n, 4, 1, 1, generator=generator)[:, :, 0] * 2 - 1
        cx = cx + jitter * 0.5 * r[:, 0:1]
        cy = cy + jitter * 0.5 * r[:, 1:2]
        scale = 1 + jitter * r[:, 2:3]
        rx, ry = rx * scale, ry * scale
    ys = (torch.arange(h).float() + 0.5) / h
    xs = (torch.arange(w).float() + 0.5) / w
    dy = (ys[None, :, None] - cy) / ry
    dx = (xs[None, None, :] - cx) / rx
    rho = torch.sqrt(dx**2 + dy**2)  # 1 on the ellipse
    # distance outside the ellipse, approximately, in units of H
    outside = (rho - 1).clamp_min(0) * torch.minimum(rx * w / h, ry)
    m = (1 - outside / max(feather, 1e-6)).clamp(0, 1)
    return m[:, None].to(device)


def _sn(m: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(m)


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 4, 2, 1)
        self.norm = nn.GroupNorm(min(8, cout // 4), cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class _Up(nn.Module):
    """Upsample, join the skip, conv; modulated by z (a per-channel scale and shift)."""

    def __init__(self, cin: int, cskip: int, cout: int, z_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin + cskip, cout, 3, 1, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.norm = nn.GroupNorm(min(8, cout // 4), cout, affine=False)
        self.film = nn.Linear(z_dim, 2 * cout)

    def forward(self, x: Tensor, skip: Tensor, z: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        v = F.leaky_relu(self.conv1(torch.cat([x, skip], 1)), 0.2)
        gamma, beta = self.film(z)[:, :, None, None].chunk(2, 1)
        v = self.norm(self.conv2(v)) * (1 + gamma) + beta
        return F.leaky_relu(v, 0.2)


class FaceGenerator(nn.Module):
    """G(context, mask, z) -> a full crop in [0, 1].

    A U-Net: the masked crop and its mask go down four times (64 -> 4 px); ``z`` joins the
    bottleneck as channels and modulates every decoder level (FiLM), so the latent chooses
    the new face while the skips carry the context around it.

    Shape:
        - x: (N, 3, H, W) float in [0, 1], the aligned crop (its masked region is ignored).
        - mask: (N, 1, H, W) float in [0, 1], 1 where the face is replaced.
        - z: (N, z_dim).
        - output: (N, 3, H, W) float in [0, 1]; :meth:`composite` keeps the context.

    Example:
        >>> g = FaceGenerator(FaceGANMeta(width=8, z_dim=4))
        >>> x = torch.rand(2, 3, 64, 64)
        >>> m = ellipse_mask(2, (64, 64), g.meta.region, g.meta.feather)
        >>> g.composite(x, m, torch.randn(2, 4)).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, meta: FaceGANMeta) -> None:
        super().__init__()
        self.meta = meta
        w, zd = meta.width, meta.z_dim
        ch = [w, 2 * w, 4 * w, 8 * w, 8 * w]
        self.stem = nn.Conv2d(4, ch[0], 3, 1, 1)
        self.down = nn.ModuleList([_Down(ch[i], ch[i + 1]) for i in range(4)])
        self.z_in = nn.Linear(zd, ch[4] * 4)
        self.mid = nn.Conv2d(2 * ch[4], ch[4], 3, 1, 1)
        self.up = nn.ModuleList([_Up(ch[i + 1], ch[i], ch[i], zd) for i in reversed(range(4))])
        self.out = nn.Conv2d(ch[0], 3, 3, 1, 1)

    def forward(self, x: Tensor, mask: Tensor, z: Tensor) -> Tensor:
        v = torch.cat([(x * 2 - 1) * (1 - mask), mask], 1)
        skips = [F.leaky_relu(self.stem(v), 0.2)]
        for d in self.down:
            skips.append(d(skips[-1]))
        b = skips.pop()
        zmap = self.z_in(z).view(len(z), -1, 2, 2)
        zmap = F.interpolate(zmap, size=b.shape[-2:], mode="nearest")
        v = F.leaky_relu(self.mid(torch.cat([b, zmap], 1)), 0.2)
        for up in self.up:
            v = up(v, skips.pop(), z)
        return torch.tanh(self.out(v)) * 0.5 + 0.5

    def composite(self, x: Tensor, mask: Tensor, z: Tensor) -> Tensor:
        """The crop with its masked region replaced by the generated face."""
        return mask * self(x, mask, z) + (1 - mask) * x

    def mask(self, n: int, device: torch.device | str = "cpu", scale: float = 1.0) -> Tensor:
        """The generator's own region as a soft mask, (n, 1, H, W); ``scale`` enlarges the
        ellipse's radii (training jittered them by ``training["mask_jitter"]``, so scales
        within 1 +- that are masks the generator has seen)."""
        cx, cy, rx, ry = self.meta.region
        region = (cx, cy, rx * scale, ry * scale)
        return ellipse_mask(n, self.meta.size, region, self.meta.feather, device=device)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        """Write ``path`` (``torch.load(weights_only=True)``-safe) and its metadata as JSON
        beside it (``.json``)."""
        write_checkpoint(path, FORMAT, self.meta.to_json(), self)

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu") -> FaceGenerator:
        """Load a checkpoint written by :meth:`save` (weights_only: no code is unpickled)."""
        blob = read_checkpoint(path, FORMAT, "face generator")
        g = cls(FaceGANMeta.from_json(blob["meta"]))
        g.load_state_dict(blob["state_dict"])
        return g.to(device).eval()


class FaceDiscriminator(nn.Module):
    """Real crop or composite? Spectral-norm convolutions down to 4 px, a linear score
    (hinge loss: > 0 says real). It sees the mask too, so it knows where to look."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        w = width
        ch = [4, w, 2 * w, 4 * w, 8 * w]
        self.convs = nn.ModuleList([_sn(nn.Conv2d(ch[i], ch[i + 1], 4, 2, 1)) for i in range(4)])
        self.head = _sn(nn.Linear(ch[-1] * 16, 1))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        v = torch.cat([x * 2 - 1, mask], 1)
        for conv in self.convs:
            v = F.leaky_relu(conv(v), 0.2)
        v = F.adaptive_avg_pool2d(v, 4)
        return self.head(v.flatten(1)).squeeze(1)


def diff_augment(
    x: Tensor, mask: Tensor, generator: torch.Generator, cutout: float = 0.5
) -> tuple[Tensor, Tensor]:
    """DiffAugment (Zhao et al. 2020): the same random, differentiable colour, translation
    and cutout (a square of ``cutout`` of the size; 0: none) for real and fake images, so a
    discriminator trained on 4k faces does not memorise them. Applied to the image and its
    mask together."""
    n = len(x)
    dev = x.device
    r = torch.rand(n, 6, generator=generator).to(dev)
    x = x + (r[:, 0:1, None, None] - 0.5) * 0.4  # brightness
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (r[:, 1:2, None, None] + 0.5) + mean  # contrast
    grey = x.mean(1, keepdim=True)
    x = (x - grey) * (r[:, 2:3, None, None] * 2) + grey  # saturation
    h, w = x.shape[-2:]
    # translation by up to 1/8 of the size (zero padding), the same for image and mask
    tx = ((r[:, 3] - 0.5) * 0.25 * 2).view(n, 1)
    ty = ((r[:, 4] - 0.5) * 0.25 * 2).view(n, 1)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = tx[:, 0]
    theta[:, 1, 2] = ty[:, 0]
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    # cutout of `cutout` of the size at a random place
    cy = (r[:, 5] * h).long()
    cx = (torch.rand(n, generator=generator).to(dev) * w).long()
    if cutout <= 0:
        return x, mask
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    hh, hw = int(h * cutout / 2), int(w * cutout / 2)
    keep = ~(((ys - cy[:, None, None]).abs() < hh) & ((xs - cx[:, None, None]).abs() < hw))
    return x * keep[:, None], mask


def z_for_tracks(track_ids: Tensor, z_dim: int, seed: int) -> Tensor:
    """One latent per track id (seeded by the id and a per-run seed): a person keeps one
    new face for the whole track, different tracks get different faces."""
    out = []
    for t in track_ids.tolist():
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(t)) % (2**63 - 1))
        out.append(torch.randn(z_dim, generator=g))
    return torch.stack(out) if out else torch.zeros(0, z_dim)
