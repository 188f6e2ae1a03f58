"""AdvGAN's networks: a generator of bounded, target-conditioned perturbations and the small
discriminator that trains it, with their checkpoint format.

Paper: Xiao, Li, Zhu, He, Liu, Song, "Generating Adversarial Examples with Adversarial
Networks", IJCAI 2018, https://arxiv.org/abs/1801.02610. The generator here is conditioned on
the target identity (a learned embedding, broadcast as extra input channels and as a
per-channel scale and shift of the bottleneck, plus a learned low-resolution perturbation
per target), so one network serves every target of a classifier.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deid.checkpoint import JsonMeta, read_checkpoint, write_checkpoint

FORMAT = "deid-advgan/1"


@dataclass
class GeneratorMeta(JsonMeta):
    """Everything needed to rebuild a generator and to know what it is for.

    Attributes:
        channels: 1 (grayscale) or 3 (RGB): the classifier's input channels.
        size: (H, W) the generator works at: the classifier's (aligned) input size.
        num_classes: the classifier's identities (the targets it can aim at).
        eps: L-inf bound of the perturbation, in [0, 1] pixel units.
        width: channels of the first layer (the bottleneck has twice as many); 0: no
            network, the perturbation is the per-identity maps alone (a universal
            perturbation per target, and per source identity with ``source``).
        embed: size of the target embedding.
        scale: the network works at 1/scale of ``size`` (2 or 4; the per-target maps at 1/2).
        levels: strided levels of the network's encoder (1: one, as every generator shipped
            until the night of 2026-12-06; each further level halves the resolution again, at 4x
            ``width`` channels at most, with a skip connection to the decoder).
        source: also conditioned on the classifier's prediction on the clean face (one more
            classifier pass per face, which tells it which identity to move away from).
        own_source: tells the identity itself, without the classifier: a linear map of the
            face (every ``scale``-th pixel, standardised) gives a softmax over the
            identities that mixes the per-source maps (exclusive with ``source``).
        full_maps: the per-identity maps at the full input resolution (else half): finer
            patterns, at no cost per face.
        film_all: the target's embedding also scales and shifts every level of the encoder
            and the decoder (FiLM), not only the bottleneck; zero-initialised, so a new
            generator starts as one without it.
        classifier: name or path of the classifier it was trained against.
        fingerprint: :func:`classifier_fingerprint` of that classifier's weights.
        data: dataset, split and number of training faces.
        command: the command line that made it.
        training: hyper-parameters, seed, seconds.
        figures: held-out figures measured at the end of training.
    """

    channels: int
    size: tuple[int, int]
    num_classes: int
    eps: float
    width: int = 16
    embed: int = 8
    scale: int = 2
    levels: int = 1
    source: bool = False
    own_source: bool = False
    full_maps: bool = False
    film_all: bool = False
    classifier: str = ""
    fingerprint: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def classifier_fingerprint(classifier: nn.Module) -> str:
    """sha256 (first 16 hex digits) of a classifier's weights: which generator goes with it."""
    h = hashlib.sha256()
    for k, v in sorted(classifier.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _bounded(raw: Tensor, eps: float) -> Tensor:
    """``eps * tanh(raw)``, computed as ``eps * (2 sigmoid(2 raw) - 1)`` (the same function;
    on this project's CPU torch's ``sigmoid`` is several times faster than its ``tanh``)."""
    return torch.sigmoid(raw * 2.0) * (2.0 * eps) - eps


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


class AdvGenerator(nn.Module):
    """G(x, target[, source]) -> a perturbation within ``eps`` in L-inf (``eps * tanh``).

    A small encoder-decoder at 1/``scale`` of the input resolution: the face is
    average-pooled, the target's embedding joins it as extra channels, one strided
    convolution reaches the bottleneck, where two convolutions with a target-dependent
    per-channel scale and shift (FiLM) work, and the decoder comes back (with
    ``meta.film_all``, every level's output is scaled and shifted by the target too). A learned
    perturbation of the target (at half resolution, or full with ``meta.full_maps``) is
    added before the ``tanh``, and, with
    ``meta.source``, one of the identity the classifier sees in the clean face (whose
    embedding also joins the target's). The result is upsampled bilinearly to the input size:
    it is smooth at the scale of 2 pixels, which H.264 and JPEG keep better than pixel-level
    noise, and costs little (the network runs at a quarter or a sixteenth of the pixels).

    Args:
        meta: sizes (``channels``, ``size``, ``num_classes``, ``eps``, ``width``, ``embed``,
            ``scale``, ``source``).

    Shape:
        - x: (N, channels, H, W) float in [0, 1], (H, W) = ``meta.size``.
        - target: (N,) int64 in 0..num_classes-1.
        - source: (N,) int64, the classifier's prediction on ``x`` (``meta.source`` only).
        - output: (N, channels, H, W), each value in [-eps, eps].

    Example:
        >>> g = AdvGenerator(GeneratorMeta(channels=1, size=(48, 42), num_classes=5, eps=0.1))
        >>> d = g(torch.rand(2, 1, 48, 42), torch.tensor([0, 3]))
        >>> d.shape, bool(d.abs().max() <= 0.1)
        (torch.Size([2, 1, 48, 42]), True)
    """

    def __init__(self, meta: GeneratorMeta) -> None:
        super().__init__()
        self.meta = meta
        c, w, e, k = meta.channels, meta.width, meta.embed, meta.num_classes
        h2, w2 = (meta.size[0] + 1) // 2, (meta.size[1] + 1) // 2
        if meta.full_maps:
            h2, w2 = meta.size
        if w > 0:
            self.embedding = nn.Embedding(k, e)
            self.enc1 = _conv(c + e, w)
            self.enc2 = _conv(w, 2 * w, stride=2)
            self.film = nn.Linear(e, 4 * w)
            self.mid1 = _conv(2 * w, 2 * w)
            self.mid2 = _conv(2 * w, 2 * w)
            self.dec = _conv(2 * w + w, w)
            self.out = _conv(w, c)
            # deeper levels (meta.levels > 1): level l has chans[l] channels
            chans = [w] + [min(w * 2**lv, 4 * w) for lv in range(1, meta.levels + 1)]
            self.down = nn.ModuleList(
                _conv(chans[lv - 1], chans[lv], stride=2) for lv in range(2, meta.levels + 1)
            )
            self.up = nn.ModuleList(
                _conv(chans[lv] + chans[lv - 1], chans[lv - 1]) for lv in range(2, meta.levels + 1)
            )
            if meta.levels > 1:  # FiLM and the middle work at the deepest level
                self.film = nn.Linear(e, 2 * chans[-1])
                self.mid1 = _conv(chans[-1], chans[-1])
                self.mid2 = _conv(chans[-1], chans[-1])
            if meta.film_all:  # one scale and shift per channel of every level's output
                sizes = [w, *chans[1:], *chans[1 : meta.levels][::-1], w]
                self.film_sizes = sizes
                self.film_levels = nn.Linear(e, 2 * sum(sizes))
                nn.init.zeros_(self.film_levels.weight)
                nn.init.zeros_(self.film_levels.bias)
        self.target_map = nn.Parameter(0.1 * torch.randn(k, c, h2, w2))
        if meta.source and meta.own_source:
            raise ValueError(
                "a generator takes the source identity from the classifier or "
                "tells it itself, not both"
            )
        if meta.source:
            if w > 0:
                self.source_embedding = nn.Embedding(k, e)
            self.source_map = nn.Parameter(torch.zeros(k, c, h2, w2))
        if meta.own_source:
            ph, pw = (-(-n // meta.scale) for n in meta.size)
            self.identify = nn.Linear(c * ph * pw, k)
            nn.init.zeros_(self.identify.weight)  # starts as the mean of the source maps
            nn.init.zeros_(self.identify.bias)
            self.source_map = nn.Parameter(torch.zeros(k, c, h2, w2))

    def forward(self, x: Tensor, target: Tensor, source: Tensor | None = None) -> Tensor:
        h, w = x.shape[-2:]
        half = ((h + 1) // 2, (w + 1) // 2)
        maps = self.target_map[target]
        if self.meta.source:
            if source is None:
                raise ValueError("this generator is conditioned on the source identity too")
            maps = maps + self.source_map[source]
        if self.meta.own_source:
            maps = maps + self._own_source_maps(x)
        if self.meta.width == 0:  # the maps alone
            if tuple(maps.shape[-2:]) != (h, w):
                maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
            return _bounded(maps, self.meta.eps)
        emb = self.embedding(target)
        if self.meta.source:
            emb = emb + self.source_embedding(source)
        v = F.avg_pool2d(x, self.meta.scale, ceil_mode=True) * 2.0 - 1.0
        q = v.shape[-2:]
        v = torch.cat([v, emb[:, :, None, None].expand(-1, -1, *q)], 1)
        films = iter(self._films(emb))
        a = F.leaky_relu(self._mod(self.enc1(v), films), 0.2)
        skips = [F.leaky_relu(self._mod(self.enc2(a), films), 0.2)]
        for conv in self.down:
            skips.append(F.leaky_relu(self._mod(conv(skips[-1]), films), 0.2))
        b = skips.pop()
        gamma, beta = self.film(emb)[:, :, None, None].chunk(2, 1)
        m = F.leaky_relu(self.mid1(b) * (1 + gamma) + beta, 0.2)
        b = b + self.mid2(m)
        for conv in reversed(self.up):
            s = skips.pop()
            b = F.interpolate(b, size=s.shape[-2:], mode="bilinear", align_corners=False)
            b = F.leaky_relu(self._mod(conv(torch.cat([b, s], 1)), films), 0.2)
        up = F.interpolate(b, size=q, mode="bilinear", align_corners=False)
        d = self.out(F.leaky_relu(self._mod(self.dec(torch.cat([up, a], 1)), films), 0.2))
        if self.meta.full_maps:
            raw = F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False) + maps
        else:
            if tuple(q) != half:
                d = F.interpolate(d, size=half, mode="bilinear", align_corners=False)
            raw = F.interpolate(d + maps, size=(h, w), mode="bilinear", align_corners=False)
        return _bounded(raw, self.meta.eps)

    def _films(self, emb: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per level, the target's (1 + scale, shift) of its channels (``meta.film_all``)."""
        if not self.meta.film_all:
            return []
        parts = self.film_levels(emb).split([*self.film_sizes, *self.film_sizes], 1)
        n = len(self.film_sizes)
        return [
            (1 + g[:, :, None, None], b[:, :, None, None])
            for g, b in zip(parts[:n], parts[n:], strict=True)
        ]

    @staticmethod
    def _mod(v: Tensor, films: Any) -> Tensor:
        film = next(films, None)
        return v if film is None else v * film[0] + film[1]

    def identity_logits(self, x: Tensor) -> Tensor:
        """(N, num_classes) the generator's own guess of the identity the classifier sees in
        ``x`` (``meta.own_source``): a linear map of every ``scale``-th pixel of the face
        in each direction, standardised; trained on the classifier's answers, beside the
        attack's loss."""
        v = x[:, :, :: self.meta.scale, :: self.meta.scale].flatten(1)
        mean = v.mean(1, keepdim=True)
        v = (v - mean) * (v - mean).pow(2).mean(1, keepdim=True).clamp_min(1e-6).rsqrt()
        return self.identify(v)

    def _own_source_maps(self, x: Tensor) -> Tensor:
        """(N, C, h, w) the per-source maps mixed by the softmax of the generator's own guess
        of the face's identity (``meta.own_source``)."""
        p = torch.softmax(self.identity_logits(x), 1)
        return (p @ self.source_map.flatten(1)).view(-1, *self.source_map.shape[1:])

    def zero_output(self) -> None:
        """Start the network's output layer at zero: the perturbation is then the per-target
        maps alone (a universal perturbation per target) until the network learns
        (``AdvGANRecipe.zero_out``)."""
        if self.meta.width > 0:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    # -- checkpoints ---------------------------------------------------------------------------
    # the per-identity maps are stored in float16: the full-resolution maps of 185 CelebA
    # identities are 9 MB in float32. On the CelebA generator's 890 held-out faces the
    # rounding moved its perturbation by at most 0.1 grey level, changed 0.07% of the 8-bit
    # pixels and no success (89.78% both)
    HALF = ("target_map", "source_map")

    def round_maps(self) -> None:
        """Round the per-identity maps to what :meth:`save` stores (float16), so that figures
        measured after this are the saved generator's."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name in self.HALF:
                    p.copy_(p.half())

    def save(self, path: Path | str) -> None:
        """Write ``path`` (``torch.load(weights_only=True)``-safe; the per-identity maps in
        float16, :attr:`HALF`) and its metadata as JSON beside it (``.json``)."""
        write_checkpoint(path, FORMAT, self.meta.to_json(), self, half=self.HALF)

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu") -> AdvGenerator:
        """Load a checkpoint written by :meth:`save` (weights_only: no code is unpickled)."""
        blob = read_checkpoint(path, FORMAT, "AdvGAN", "AdvGAN generator")
        g = cls(GeneratorMeta.from_json(blob["meta"]))
        g.load_state_dict(blob["state_dict"])
        # channels-last convolutions: a three-level generator ran 0.43 instead of 0.64 ms a
        # face on this project's CPU (outputs equal to float rounding)
        return g.to(device, memory_format=torch.channels_last).eval()


def read_meta(path: Path | str) -> GeneratorMeta:
    """The metadata of a generator checkpoint."""
    blob = read_checkpoint(path, FORMAT, "AdvGAN", "AdvGAN generator")
    return GeneratorMeta.from_json(blob["meta"])


class Discriminator(nn.Module):
    """Real face or face + perturbation? Three strided convolutions with spectral norm,
    global average pooling and a linear score (a logit: > 0 says real)."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.convs = nn.ModuleList(
            [
                sn(nn.Conv2d(channels, width, 4, 2, 1)),
                sn(nn.Conv2d(width, 2 * width, 4, 2, 1)),
                sn(nn.Conv2d(2 * width, 4 * width, 4, 2, 1)),
            ]
        )
        self.head = sn(nn.Linear(4 * width, 1))

    def forward(self, x: Tensor) -> Tensor:
        v = x * 2.0 - 1.0
        for conv in self.convs:
            v = F.leaky_relu(conv(v), 0.2)
        return self.head(v.mean((2, 3))).squeeze(1)
