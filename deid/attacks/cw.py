"""Carlini-Wagner L2 (2016), registered as ``cw``: the ``realistic`` attack's optimiser."""

from __future__ import annotations

from typing import Literal

from deid.attacks.realistic import Realistic, RealisticConfig


class CWConfig(RealisticConfig):
    """C&W-L2: ``c_init``, ``binary_steps`` rounds of ``steps`` Adam steps at ``lr``,
    confidence ``kappa``. ``binary_steps=1`` is a fixed c (torchattacks' ``CW``)."""

    name: Literal["cw"] = "cw"  # type: ignore[assignment]


class CW(Realistic):
    r"""Carlini-Wagner L2 attack.

    Minimises ``||x' - x||_2^2 + c * f(x')`` over ``x' = (tanh(w) + 1) / 2`` (so x' is in
    [0, 1] without clipping) with Adam, ``f = max(max_{i != t} Z_i - Z_t + kappa, 0)``
    (targeted; untargeted: ``max(Z_y - max_{i != y} Z_i + kappa, 0)``) on the logits Z, and
    a per-sample binary search over c. Returns the smallest-L2 success seen, checked after
    8-bit rounding when ``quantize`` is set; a failed sample comes back unchanged.

    Paper: Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks",
    https://arxiv.org/abs/1608.04644. Norm: L2. Targeted or untargeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> r = CW(CWConfig(steps=50, lr=0.05, binary_steps=3))(model, x, torch.tensor([1, 2]))
        >>> r.success.tolist()
        [True, True]
    """

    def __init__(self, cfg: CWConfig | None = None) -> None:
        super().__init__(cfg or CWConfig())
