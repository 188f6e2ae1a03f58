"""Lower precision for an attack's gradient passes.

An attack on the CPU spends most of its time in the classifier's convolutions, forward and
backward (``torch.profiler`` on 64 CelebA faces, I-FGSM with EOT). Run in bfloat16 on a CPU
that has native bf16 instructions (AVX512-BF16 or AMX), on channels-last tensors, with the
batch norms folded into the convolutions, the same passes take 40% of the time. A gradient's
sign hardly cares: it only sets the direction of a step. A decision does care, so deid never
takes one on low-precision logits: a face stops early only when the float32 classifier
confirms it, and the logits and success an attack returns are float32
(:func:`deid.attacks.iterative.iterate`).
"""

from __future__ import annotations

import copy
import itertools
from functools import cache
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (elsewhere it is emulated, and slower
    than float32): CUDA cards that support it, CPUs with AVX512-BF16 or AMX-BF16."""
    if device.type == "cuda":  # emulated bfloat16 (cards before Ampere) is not native
        return bool(
            torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        )
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The dtype of an attack's gradient passes (None: float32, the classifier itself).

    ``auto`` is bfloat16 where ``device`` has it natively, float32 elsewhere.

    Example:
        >>> resolve_precision("float32", torch.device("cpu")) is None
        True
        >>> resolve_precision("bfloat16", torch.device("cpu"))
        torch.bfloat16
    """
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    if name == "auto":
        return torch.bfloat16 if native_bfloat16(device) else None
    # the choices are deid.config.PRECISIONS (not imported: the config imports the models)
    raise ValueError(f"precision: expected one of ['auto', 'float32', 'bfloat16'], got {name!r}")


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` into the ``Conv2d`` just before it (in place; the
    norms become ``Identity``): the same function with a seventh less work forward and backward.

    Pairs are found in ``nn.Sequential`` containers (a conv followed by its norm) and in blocks
    that name them ``convK`` / ``bnK`` (:class:`deid.models.nets.ResNet`'s). For networks in
    eval mode only: training would need the norms back."""
    for module in list(net.modules()):
        names = list(module._modules)
        pairs = (
            list(itertools.pairwise(names))
            if isinstance(module, nn.Sequential)
            else [(n, "bn" + n[4:]) for n in names if n.startswith("conv")]
        )
        for a, b in pairs:
            conv, bn = module._modules.get(a), module._modules.get(b)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                module._modules[b] = nn.Identity()
    return net


def folded_copy(net: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A frozen eval-mode copy of ``net`` for passes that train nothing: batch norms folded
    (:func:`fold_batchnorm`), channels-last, in ``dtype`` (None: the network's own)."""
    out = fold_batchnorm(copy.deepcopy(net).eval()).to(memory_format=torch.channels_last)
    if dtype is not None:
        out = out.to(dtype)
    for p in out.parameters():
        p.requires_grad_(False)
    return out
