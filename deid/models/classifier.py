"""FaceClassifier: [0, 1] pixels of any size in, identity logits out.

Everything between a face crop and the network lives here, differentiably: channel
conversion, the alignment warp (or a plain resize), and normalisation. Attacks therefore
perturb the crop at its native resolution and the perturbation pastes back exactly.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deid.checkpoint import read_checkpoint, write_checkpoint
from deid.models.nets import build_net

FORMAT = "deid-classifier/1"

# RGB -> luma, ITU-R BT.601 (what cv2.cvtColor and PIL's "L" use).
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class ClassifierMeta:
    """Everything needed to rebuild and use a classifier; stored inside its checkpoint.

    Attributes:
        arch: ``mlp`` or ``resnet``; ``arch_params`` gives its sizes.
        input_size: (H, W) the network sees.
        channels: 1 (grayscale) or 3 (RGB).
        norm: ``{"kind": "per_image"}`` (each image standardised to mean 0, std 1; with
            ``"min_std": s`` the std is floored at ``s``, so a dark, flat face is not
            stretched by more than ``1/s``) or ``{"kind": "channel", "mean": [...],
            "std": [...]}``.
        class_names: identity names, index = class id.
        template: the crop convention: where the 5 facial landmarks (eyes, nose, mouth
            corners; MTCNN order) sit in a training crop, as fractions of (W, H). A detected
            face is aligned to this by a similarity transform.
        dataset, split: what it was trained on, and the split spec to rebuild the test set.
        accuracy: held-out figures measured when it was trained.
        command: the command line that made it.
    """

    arch: str
    arch_params: dict[str, Any]
    input_size: tuple[int, int]
    channels: int
    norm: dict[str, Any]
    class_names: list[str]
    template: list[list[float]]
    dataset: str = ""
    split: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ClassifierMeta:
        d = json.loads(text)
        d["input_size"] = tuple(d["input_size"])
        return cls(**d)


def to_channels(x: Tensor, channels: int) -> Tensor:
    """Convert (N, 1|3, H, W) to the wanted number of channels (luma for RGB -> gray)."""
    if x.shape[1] == channels:
        return x
    if channels == 1 and x.shape[1] == 3:
        w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")


def warp(x: Tensor, theta: Tensor, out_hw: tuple[int, int], max_supersample: int = 4) -> Tensor:
    """Differentiable affine warp of crops to ``out_hw`` with area-like anti-aliasing.

    Args:
        x: (N, C, H, W) crops.
        theta: (N, 2, 3) affine maps from output to input normalised coordinates, as
            :func:`torch.nn.functional.affine_grid` takes them (align_corners=False).
        out_hw: output (h, w).

    Returns:
        (N, C, h, w). Where a crop is larger than the output, ``k x k`` bilinear samples per
        output pixel are averaged (k = that sample's downscale factor, at most
        ``max_supersample``), so every input pixel contributes and small perturbations are
        not aliased away. k depends on each sample alone, so padding a batch changes nothing.
    """
    h, w = out_hw
    # per-sample scale: input pixels per output pixel (from the area ratio of theta)
    det = (theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0]).abs()
    scale = torch.sqrt(det * x.shape[-2] * x.shape[-1] / (h * w))
    ks = torch.clamp(torch.ceil(scale - 0.25), 1, max_supersample).long().tolist()
    out = x.new_empty((x.shape[0], x.shape[1], h, w))
    for k in sorted(set(ks)):
        idx = [i for i, v in enumerate(ks) if v == k]
        sel = torch.tensor(idx, device=x.device)
        xs, ts = (x, theta) if len(idx) == len(ks) else (x[sel], theta[sel])
        grid = F.affine_grid(
            ts.to(x.dtype), [len(idx), x.shape[1], h * k, w * k], align_corners=False
        )
        y = F.grid_sample(xs, grid, mode="bilinear", padding_mode="border", align_corners=False)
        y = F.avg_pool2d(y, k) if k > 1 else y
        if len(idx) == len(ks):
            return y
        out = out.index_copy(0, sel, y)
    return out


class FaceClassifier(nn.Module):
    """Identity classifier over [0, 1] pixels.

    Args:
        net: the network on normalised (N, channels, *input_size) tensors.
        meta: its :class:`ClassifierMeta`.

    Shape:
        - x: (N, 1|3, H, W) float in [0, 1], any H, W.
        - theta (optional): (N, 2, 3) alignment warp (see :func:`warp`); without it the crop
          is resized to the input size (anti-aliased).
        - output: (N, K) logits.
    """

    def __init__(self, net: nn.Module, meta: ClassifierMeta) -> None:
        super().__init__()
        self.net = net
        self.meta = meta
        if meta.norm["kind"] == "channel":
            self.register_buffer("mean", torch.tensor(meta.norm["mean"]).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(meta.norm["std"]).view(1, -1, 1, 1))
        else:
            self.mean = None
            self.std = None
        self.min_std = float(meta.norm.get("min_std", 1e-3))
        # (network copy, dtype) for gradient passes; a plain attribute, so neither saved,
        # trained nor moved by .to(): set it after the classifier is on its device
        self._lowp: tuple[nn.Module, torch.dtype] | None = None
        # (key, network copy) for passes without gradients: see _inference_net
        self._infer: tuple[tuple[int, ...], nn.Module] | None = None
        self._has_conv = any(isinstance(m, nn.Conv2d) for m in net.modules())

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def set_gradient_precision(self, dtype: torch.dtype | None) -> None:
        """Run the gradient passes of attacks (:meth:`fast`) in ``dtype``, on a channels-last
        copy of the network in ``dtype`` with its batch norms folded into the convolutions
        (None or float32: no copy, full precision). On 128 CelebA faces, forward and
        backward: 0.42 s in float32, 0.21 s under bfloat16 autocast, 0.17 s as here (2
        threads, AVX512-BF16). Every other use of the classifier, and every decision an attack
        takes, stays float32 (:mod:`deid.models.precision`). Call it after the classifier is
        on its device: the copy does not follow ``.to()``."""
        if dtype is None or dtype == torch.float32:
            self._lowp = None
            return
        from deid.models.precision import folded_copy

        self._lowp = (folded_copy(self.net, dtype), dtype)

    @property
    def gradient_precision(self) -> str:
        """``float32``, or the dtype :meth:`set_gradient_precision` set (``bfloat16``)."""
        return "float32" if self._lowp is None else str(self._lowp[1]).removeprefix("torch.")

    def fast(self) -> nn.Module:
        """This classifier for an attack's gradient passes: itself, or with
        :meth:`set_gradient_precision` a view that runs the network in lower precision
        (its logits serve gradients only, never a decision)."""
        return self if self._lowp is None else _LowPrecision(self)

    def prepare(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        """[0, 1] crops -> the network's normalised input."""
        x = to_channels(x, self.meta.channels)
        hw = tuple(self.meta.input_size)
        if theta is not None:
            x = warp(x, theta, hw)
        elif tuple(x.shape[-2:]) != hw:
            x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
        if self.mean is not None:
            return (x - self.mean) / self.std
        # per-image standardisation: invariant to brightness and contrast (Yale B's lighting)
        # (two passes: torch's std is 4x slower on the CPU; the variance is floored before the
        # root, so a flat crop has a finite gradient)
        flat = x.flatten(1)
        d = flat - flat.mean(1, keepdim=True)
        var = d.square().sum(1, keepdim=True) / max(flat.shape[1] - 1, 1)
        return (d / var.clamp_min(self.min_std**2).sqrt()).view_as(x)

    def forward(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        z = self.prepare(x, theta)
        if self._has_conv and not self.training and not torch.is_grad_enabled():
            return self._inference_net()(z.contiguous(memory_format=torch.channels_last))
        return self.net(z)

    def _inference_net(self) -> nn.Module:
        """The network for passes without gradients in eval mode: a copy (same dtype) with
        the batch norms folded into the convolutions, channels-last. The same function up to
        float rounding (logits within 1e-5 on CelebA faces) in two thirds of the time on this
        CPU. Made again whenever a weight or buffer of the network changed in place or moved
        (training steps, ``load_state_dict``, ``.to()``)."""
        from deid.models.precision import folded_copy

        key = tuple(
            v
            for t in itertools.chain(self.net.parameters(), self.net.buffers())
            for v in (t.data_ptr(), t._version)
        )
        if self._infer is None or self._infer[0] != key:
            self._infer = (key, folded_copy(self.net))
        return self._infer[1]

    def embed(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        """(N, D) the network's internal representation before the class layer (Feature
        Adversaries match it). Needs a net with a ``features(x)`` method (MLP, ResNet)."""
        features = getattr(self.net, "features", None)
        if not callable(features):
            raise TypeError(
                f"{type(self.net).__name__} has no features(x) method: expected a network "
                "that exposes its embedding (deid.models.nets.MLP or ResNet)"
            )
        return features(self.prepare(x, theta))

    def bind(self, theta: Tensor) -> BoundClassifier:
        """This classifier with a fixed per-sample alignment: a plain ``model(x)`` for attacks."""
        return BoundClassifier(self, theta)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        """Write ``path`` (weights + metadata, ``torch.load(weights_only=True)``-safe) and a
        human-readable ``path.with_suffix('.json')``."""
        write_checkpoint(path, FORMAT, self.meta.to_json(), self.net)

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu") -> FaceClassifier:
        """Load a checkpoint written by :meth:`save` (weights_only: no code is unpickled)."""
        blob = read_checkpoint(path, FORMAT, "classifier")
        meta = ClassifierMeta.from_json(blob["meta"])
        net = build_net(
            meta.arch, meta.arch_params, meta.channels, meta.input_size, meta.num_classes
        )
        net.load_state_dict(blob["state_dict"])
        return cls(net, meta).to(device).eval()


class _LowPrecision(nn.Module):
    """A :class:`FaceClassifier`'s network in lower precision (see
    :meth:`FaceClassifier.set_gradient_precision`): the input is prepared (aligned,
    normalised) in float32, the network's copy runs in its dtype on channels-last tensors,
    the logits come back float32."""

    def __init__(self, classifier: FaceClassifier) -> None:
        super().__init__()
        self.exact = classifier
        self.train(False)

    @property
    def num_classes(self) -> int:
        return self.exact.num_classes

    def forward(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        assert self.exact._lowp is not None
        net, dtype = self.exact._lowp
        z = self.exact.prepare(x, theta).contiguous(memory_format=torch.channels_last)
        return net(z.to(dtype)).float()


class BoundClassifier(nn.Module):
    """A :class:`FaceClassifier` with a fixed alignment ``theta`` (N, 2, 3) per sample."""

    def __init__(self, classifier: FaceClassifier | _LowPrecision, theta: Tensor) -> None:
        super().__init__()
        self.classifier = classifier
        self.theta = theta
        self.train(classifier.training)  # a fresh Module says training=True; mirror the wrapped one

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def select(self, idx: Tensor) -> BoundClassifier:
        """The same classifier bound to a subset of the alignments (for per-sample early stop)."""
        return BoundClassifier(self.classifier, self.theta[idx.to(self.theta.device)])

    def fast(self) -> BoundClassifier:
        """The same, for an attack's gradient passes (see :meth:`FaceClassifier.fast`)."""
        fast = getattr(self.classifier, "fast", None)
        view = fast() if callable(fast) else self.classifier
        return self if view is self.classifier else BoundClassifier(view, self.theta)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] != self.theta.shape[0]:
            raise ValueError(
                f"bound to {self.theta.shape[0]} alignments, got a batch of {x.shape[0]}"
            )
        return self.classifier(x, self.theta)

    def embed(self, x: Tensor) -> Tensor:
        """(N, D) the embedding under the bound alignments (see :meth:`FaceClassifier.embed`)."""
        return self.classifier.embed(x, self.theta)
