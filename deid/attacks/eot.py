"""Expectation over Transformation: differentiable stand-ins for what happens to a face after
the attack (JPEG/H.264 quantisation, rescaling, blur, sub-pixel shifts, sensor noise; with
``warp``, the small turns and zooms of a fresh detection's alignment).

An iterative attack with :class:`EOTConfig` ``enabled`` evaluates every iterate on ``samples``
transformed copies (the first copy is the identity), sums the loss over them and steps along
the sign of that gradient, so the perturbation it finds is one that survives the whole family
of transformations rather than only the exact pixels it was computed on (Athalye, Engstrom,
Ilyas, Kwok, "Synthesizing Robust Adversarial Examples", https://arxiv.org/abs/1707.07397).

The codec stand-in is a JPEG-style quantiser: RGB -> YCbCr (BT.601), optional 4:2:0 chroma
subsampling (what H.264 and most JPEGs do), an orthonormal 8x8 (or 4x4) block DCT, division by
a quantisation table, rounding, and the inverse. Rounding passes gradients straight through
(forward: exact rounding; backward: identity, i.e. BPDA) or uses the cubic approximation
``round(x) + (x - round(x))^3`` (Shin and Song, "JPEG-resistant Adversarial Images", 2017).
The block grid's phase is drawn at random (a face can sit anywhere relative to the codec's
8x8/16x16 grid) unless ``grid`` says the crop origin is aligned to it.

The default strengths were chosen by measuring on the real encoders (``deid eval survival``,
README "Survives encoding"): libx264 at crf 23 zeroes noise-like detail in a face about as a
flat step of ~26 levels with a dead zone would, far harder than JPEG tables at quality 90, so
so the default is the flat (H.264-like) quantiser with steps of 12-36 and x264's dead zones,
plus blur up to sigma 1.5, and a face stops only once it and its copies pick the target
by a logit margin of 2. Those survive
JPEG q90 too; the JPEG tables (``codec: jpeg`` or ``mixed``) remain for JPEG-only output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from deid.attacks.base import Budget

# ITU-T T.81 Annex K: the example luminance and chrominance quantisation tables (quality 50).
_JPEG_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_JPEG_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)

# RGB <-> YCbCr, full range (JPEG/JFIF), on 0..255 values.
_RGB2YCC = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)
_YCC2RGB = torch.linalg.inv(torch.tensor(_RGB2YCC, dtype=torch.float64)).tolist()


class EOTConfig(BaseModel):
    """Which transformations an attack averages its gradient over, and how strong they get.

    Every transformed copy draws its strengths uniformly between 0 (or the mildest setting)
    and the bound given here. Copy 0 is always the untransformed image, so the attack's own
    success check (``margin``) keeps applying to the pixels that are written.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(False, description="average the gradient over transformed copies")
    samples: int = Field(4, ge=2, le=64, description="copies per step, the first untransformed")
    codec: Literal["jpeg", "flat", "mixed", "none"] = Field(
        "flat",
        description="quantiser: JPEG tables, a flat step on a 4x4/8x8 DCT (H.264-like), "
        "a random choice of the two per copy, or none",
    )
    quality: tuple[int, int] = Field(
        (50, 90), description="JPEG quality range drawn per copy (the tables of IJG libjpeg)"
    )
    qstep: tuple[float, float] = Field(
        (12.0, 36.0),
        description="flat quantiser step range in 8-bit levels (libx264 at crf 18-28 zeroes "
        "noise-like detail about as a step of 15-40 with a dead zone would)",
    )
    chroma: Literal["420", "444", "random"] = Field(
        "random", description="chroma subsampling of the codec stand-in"
    )
    grid: Literal["random", "aligned"] = Field(
        "random",
        description="block-grid phase: random, or 0 (the crop origin sits on the codec's grid)",
    )
    rounding: Literal["ste", "cubic"] = Field(
        "ste", description="straight-through (BPDA) or cubic soft rounding"
    )
    scale: float = Field(0.15, ge=0.0, lt=1.0, description="down-and-up rescale by up to this")
    blur: float = Field(1.5, ge=0.0, le=5.0, description="Gaussian blur sigma up to (pixels)")
    shift: float = Field(1.0, ge=0.0, le=4.0, description="sub-pixel shift up to (pixels)")
    warp: float = Field(
        0.0,
        ge=0.0,
        le=0.2,
        description="rotation (radians) and scale change (relative) about the crop's centre, "
        "each up to this: the alignment a fresh detection of the written face may give",
    )
    noise: Budget = Field(2 / 255, ge=0.0, le=0.25, description="Gaussian noise std up to")
    margin: float = Field(
        2.0,
        ge=0.0,
        description="logit margin by which the image and its copies must pick the target "
        "before a face stops early (success itself is judged by the attack's margin)",
    )
    robust: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="early stop once this share of the copies is classified as the target",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _ranges(self) -> EOTConfig:
        lo, hi = self.quality
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"quality: expected 1 <= low <= high <= 100, got {list(self.quality)}")
        a, b = self.qstep
        if not 0.0 < a <= b <= 255.0:
            raise ValueError(f"qstep: expected 0 < low <= high <= 255, got {list(self.qstep)}")
        return self


# --------------------------------------------------------------------------------------------
# building blocks (all differentiable in x)
# --------------------------------------------------------------------------------------------
def round_ste(x: Tensor) -> Tensor:
    """Exact rounding forward, identity gradient backward (BPDA)."""
    return x + (torch.round(x) - x).detach()


def round_cubic(x: Tensor) -> Tensor:
    """``round(x) + (x - round(x))^3``: close to rounding, with a non-zero gradient."""
    r = torch.round(x)
    return r + (x - r) ** 3


def jpeg_table(quality: int, chroma: bool = False) -> Tensor:
    """The (8, 8) quantisation table libjpeg uses at ``quality`` (1..100)."""
    q = min(100, max(1, int(quality)))
    scale = 5000 / q if q < 50 else 200 - 2 * q
    base = torch.tensor(_JPEG_CHROMA if chroma else _JPEG_LUMA, dtype=torch.float64)
    return torch.clamp(torch.floor((base * scale + 50) / 100), 1, 255).float()


def dct_matrix(
    n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(n, n) orthonormal DCT-II matrix D: coefficients = D @ block @ D.T."""
    k = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def block_quantise(
    plane: Tensor,
    table: Tensor,
    rounding: Literal["ste", "cubic"] = "ste",
    deadzone: float = 0.5,
) -> Tensor:
    """Quantise a (N, C, H, W) plane (0..255 values, H and W multiples of the block size) in
    the block DCT domain with ``table`` (b, b), and return it decoded.

    ``deadzone`` is the rounding offset f of ``sign(c) floor(|c| / q + f)``: 0.5 is plain
    rounding (JPEG); H.264 encoders use 1/3 in intra and 1/6 in inter blocks, which zeroes
    more small coefficients (with ``ste`` only; the cubic rounding ignores it)."""
    b = table.shape[-1]
    n, c, h, w = plane.shape
    d = dct_matrix(b, plane.device, plane.dtype)
    # every b x b block as a row of b*b pixels (pixel_unshuffle), times the b*b basis images
    # (basis[u, v] = outer(D[u], D[v])): the same sums as D @ block @ D.T in one large matrix
    # product, and the inverse in another (about 4x faster than a strided convolution)
    basis = (d[:, None, :, None] * d[None, :, None, :]).reshape(b * b, b * b)
    blocks = F.pixel_unshuffle((plane - 128.0).reshape(n * c, 1, h, w), b).permute(0, 2, 3, 1)
    coef = blocks @ basis.T
    t = table.to(plane.device, plane.dtype).reshape(b * b)
    if rounding == "cubic":
        coef = round_cubic(coef / t) * t
    elif deadzone == 0.5:
        coef = round_ste(coef / t) * t
    else:
        u = coef / t
        q = torch.sign(u) * torch.floor(u.abs() + deadzone)
        coef = (u + (q - u).detach()) * t
    out = F.pixel_shuffle((coef @ basis).permute(0, 3, 1, 2), b)
    return out.reshape(n, c, h, w) + 128.0


def rgb_to_ycc(x: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in 0..255 -> full-range YCbCr (JPEG's), 0..255."""
    return _mix(x, _RGB2YCC, (0.0, 128.0, 128.0))


def ycc_to_rgb(y: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycc`."""
    return _mix(y - y.new_tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1), _YCC2RGB)


def _mix(
    x: Tensor, m: Sequence[Sequence[float]], bias: Sequence[float] = (0.0, 0.0, 0.0)
) -> Tensor:
    """``out[:, i] = sum_j m[i][j] x[:, j] + bias[i]`` for 3 channels, as plane arithmetic
    (an einsum or a 1x1 convolution costs several times more on the CPU at these sizes)."""
    c = [x[:, j : j + 1] for j in range(3)]
    return torch.cat(
        [m[i][0] * c[0] + m[i][1] * c[1] + m[i][2] * c[2] + bias[i] for i in range(3)], 1
    )


def codec(
    x: Tensor,
    luma_table: Tensor,
    chroma_table: Tensor | None = None,
    subsample: bool = False,
    phase: tuple[int, int] = (0, 0),
    rounding: Literal["ste", "cubic"] = "ste",
    deadzone: float = 0.5,
) -> Tensor:
    """Differentiable JPEG-like round trip of [0, 1] images.

    Args:
        x: (N, C, H, W) in [0, 1], C = 1 (luma only) or 3 (RGB).
        luma_table: (b, b) quantisation steps in 8-bit levels for Y (b = 8 or 4).
        chroma_table: (b, b) for Cb and Cr (default: ``luma_table``).
        subsample: 4:2:0 chroma (2x2 averages, quantised, then upsampled bilinearly).
        phase: (dy, dx) where the image's top-left pixel sits inside the codec's block grid;
            the grid is the (2 b)-pixel one of the subsampled chroma when ``subsample``.
        rounding: ``ste`` or ``cubic``.
        deadzone: rounding offset (see :func:`block_quantise`).

    Returns:
        (N, C, H, W), clamped to [0, 1] (the 8-bit rounding of the decoder is left out).

    Example:
        >>> x = torch.linspace(0.2, 0.8, 24).expand(2, 3, 20, 24)  # a smooth ramp
        >>> y = codec(x, jpeg_table(90), jpeg_table(90, chroma=True), subsample=True)
        >>> y.shape == x.shape and bool((y - x).abs().max() < 2 / 255)
        True
    """
    b = luma_table.shape[-1]
    ct = luma_table if chroma_table is None else chroma_table
    grid = 2 * b if subsample else b
    _, c, h, w = x.shape
    py, px = phase[0] % grid, phase[1] % grid
    ph = (-(h + py)) % grid
    pw = (-(w + px)) % grid
    rnd = round_ste if rounding == "ste" else round_cubic

    def to8(t: Tensor) -> Tensor:  # the codec's 8-bit planes, before and after the DCT
        return rnd(t).clamp(0, 255)

    v = F.pad(x * 255.0, (px, pw, py, ph), mode="replicate")
    if c == 1:
        v = to8(block_quantise(to8(v), luma_table, rounding, deadzone))
    else:
        ycc = to8(rgb_to_ycc(v))
        y = to8(block_quantise(ycc[:, :1], luma_table, rounding, deadzone))
        cc = ycc[:, 1:]
        if subsample:
            small = to8(F.avg_pool2d(cc, 2))
            small = to8(block_quantise(small, ct, rounding, deadzone))
            cc = F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False)
        else:
            cc = to8(block_quantise(cc, ct, rounding, deadzone))
        v = ycc_to_rgb(torch.cat([y, cc], 1))
    v = v[:, :, py : py + h, px : px + w]
    return (v / 255.0).clamp(0, 1)


def jpeg(
    x: Tensor,
    quality: int,
    subsample: bool = False,
    phase: tuple[int, int] = (0, 0),
    rounding: Literal["ste", "cubic"] = "ste",
) -> Tensor:
    """:func:`codec` with libjpeg's tables at ``quality``: what ``PIL.Image.save(...,
    quality=q, subsampling=0 or 2)`` does to an image, differentiably (within about one
    8-bit level; see tests/test_eot.py)."""
    return codec(
        x, jpeg_table(quality), jpeg_table(quality, chroma=True), subsample, phase, rounding
    )


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (reflect padding); ``sigma`` < 0.1 returns ``x``."""
    if sigma < 0.1:
        return x
    r = max(1, math.ceil(2.5 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < r:  # tiny images: shrink the kernel to what reflect padding allows
        k = k[r - pad : r + pad + 1]
        k = k / k.sum()
        r = pad
    if r == 0:
        return x
    # channels-last: the depthwise convolutions run about 2.7x faster on the CPU
    v = F.pad(x.contiguous(memory_format=torch.channels_last), (r, r, r, r), mode="reflect")
    v = F.conv2d(v, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(v, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def rescale(x: Tensor, factor: float) -> Tensor:
    """Down to ``factor`` of the size (anti-aliased) and back up: lost detail, same shape."""
    h, w = x.shape[-2:]
    sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
    if (sh, sw) == (h, w):
        return x
    small = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def translate(x: Tensor, dy: float, dx: float) -> Tensor:
    """Shift by (dy, dx) pixels with bilinear resampling (border values repeat).

    The same values as ``F.grid_sample`` of a translated ``affine_grid`` (bilinear, border
    padding), done as two separable two-tap interpolations, which cost a fraction of it
    forward and backward."""
    if abs(dy) < 1e-3 and abs(dx) < 1e-3:
        return x
    return _shift(_shift(x, dx, -1), dy, -2)


def _shift(x: Tensor, d: float, dim: int) -> Tensor:
    """``out[i] = x[i - d]`` along ``dim``, linearly interpolated, indices clamped to the
    edge (what bilinear sampling with border padding gives)."""
    if d == 0.0:
        return x
    k = math.floor(-d)
    f = -d - k
    n = x.shape[dim]
    i = torch.arange(n, device=x.device) + k
    a = x.index_select(dim, i.clamp(0, n - 1))
    b = x.index_select(dim, (i + 1).clamp(0, n - 1))
    return a * (1.0 - f) + b * f


def warp(x: Tensor, angle: float, scale: float) -> Tensor:
    """Rotate by ``angle`` radians and scale by ``scale`` about the centre (bilinear, border
    values repeat): what a slightly different box and landmarks do to a face's alignment."""
    if abs(angle) < 1e-4 and abs(scale - 1.0) < 1e-4:
        return x
    h, w = x.shape[-2:]
    c, s = math.cos(angle) / scale, math.sin(angle) / scale
    theta = x.new_tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]]).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------------------------
# the random family
# --------------------------------------------------------------------------------------------
class Transforms:
    """Draws and applies the random transformations of an :class:`EOTConfig`.

    Every copy gets one draw shared by the faces of the batch (one draw per copy keeps a step
    to a single batched model call; over the steps of an attack the draws vary).

    Args:
        cfg: the EOT settings.

    Example:
        >>> t = Transforms(EOTConfig(enabled=True, samples=3))
        >>> x = torch.rand(2, 3, 32, 32)
        >>> y = t.expand(x)
        >>> y.shape, bool(torch.equal(y[:2], x))
        (torch.Size([6, 3, 32, 32]), True)
    """

    def __init__(self, cfg: EOTConfig) -> None:
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def _u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.gen))

    def sample(self, x: Tensor) -> Tensor:
        """One random transformation of the batch ``x`` (N, C, H, W) in [0, 1]."""
        cfg = self.cfg
        v = x
        if cfg.scale > 0:
            v = rescale(v, 1.0 - self._u(0.0, cfg.scale))
        if cfg.shift > 0:
            v = translate(v, self._u(-cfg.shift, cfg.shift), self._u(-cfg.shift, cfg.shift))
        if cfg.warp > 0:
            v = warp(v, self._u(-cfg.warp, cfg.warp), 1.0 + self._u(-cfg.warp, cfg.warp))
        if cfg.blur > 0:
            v = gaussian_blur(v, self._u(0.0, cfg.blur))
        if cfg.codec != "none":
            kind = cfg.codec
            if kind == "mixed":
                kind = "jpeg" if self._u() < 0.5 else "flat"
            sub = cfg.chroma == "420" or (cfg.chroma == "random" and self._u() < 0.5)
            grid = 16 if sub else 8
            phase = (
                (0, 0)
                if cfg.grid == "aligned"
                else (int(self._u() * grid) % grid, int(self._u() * grid) % grid)
            )
            if kind == "jpeg":
                q = round(self._u(cfg.quality[0], cfg.quality[1]))
                lt, ct = jpeg_table(q), jpeg_table(q, chroma=True)
            else:
                b = 8 if self._u() < 0.5 else 4
                step = self._u(*cfg.qstep)
                lt = torch.full((b, b), step)
                ct = lt * 1.25  # H.264 quantises chroma a little more coarsely at the same QP
            dz = 0.5 if kind == "jpeg" else (1 / 3 if self._u() < 0.5 else 1 / 6)
            v = codec(v, lt, ct, sub, phase, cfg.rounding, dz)
        if cfg.noise > 0:
            sd = self._u(0.0, cfg.noise)
            noise = torch.randn(v.shape, generator=self.gen).to(v.device, v.dtype)
            v = (v + sd * noise).clamp(0, 1)
        return v

    def expand(self, x: Tensor) -> Tensor:
        """(samples * N, C, H, W): ``x`` itself, then ``samples - 1`` transformed copies."""
        return torch.cat([x] + [self.sample(x) for _ in range(self.cfg.samples - 1)])
