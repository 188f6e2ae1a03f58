"""The sign-gradient attacks' update steps, each in its attack's own module, and the loop
they share (deid.attacks.iterative, issue 11).

The textbook updates are written out here as torchattacks writes them; each attack's
``step`` must give exactly those numbers. The images the attacks return are compared with
torchattacks and ART in tests/test_attack_peers.py.
"""

from __future__ import annotations

import pytest
import torch

from deid.attacks import FGSM, IFGSM, MIFGSM, PGD, FGSMConfig, IFGSMConfig, MIFGSMConfig, PGDConfig
from deid.attacks.base import grid_bounds, predict, quantize8
from deid.attacks.iterative import Running, clip_ball, iterate

EPS, ALPHA = 8 / 255, 2 / 255


def _state(x0: torch.Tensor, eps: float, quantize: bool, targeted: bool) -> Running:
    lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
    if quantize:
        lo, hi = grid_bounds(lo, hi)
    n = len(x0)
    return Running(
        x0, lo, hi, eps, quantize, -1.0 if targeted else 1.0,
        torch.zeros(n, dtype=torch.long), torch.arange(n), torch.zeros(n, dtype=torch.long),
    )  # fmt: skip


@pytest.fixture
def point() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Originals, an iterate inside their eps-ball (some pixels at 0 and 1) and a gradient."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g)
    x0[:, :, 0] = 0.0
    x0[:, :, 1] = 1.0
    x = (x0 + EPS * (2 * torch.rand(x0.shape, generator=g) - 1)).clamp(0, 1)
    grad = torch.randn(x0.shape, generator=g)
    grad[0, 0, 0, :3] = 0.0  # sign 0: no step there
    return x0, x, grad


@pytest.mark.parametrize(
    ("cls", "module"),
    [(IFGSM, "ifgsm"), (FGSM, "fgsm"), (PGD, "pgd"), (MIFGSM, "mifgsm")],
)
def test_each_attack_keeps_its_step_in_its_own_module(cls: type, module: str) -> None:
    assert cls.step.__module__ == f"deid.attacks.{module}"


@pytest.mark.parametrize("targeted", [True, False])
def test_steps_are_the_textbook_updates(point, targeted: bool) -> None:
    """Without quantisation: torchattacks' BIM (I-FGSM), FGSM, PGD and MI-FGSM updates."""
    x0, x, grad = point
    s = _state(x0, EPS, False, targeted)
    sg = -1.0 if targeted else 1.0
    # BIM: clamp to max(x0 - eps, 0) from below and min(x0 + eps, 1) from above
    v = x + sg * ALPHA * grad.sign()
    a = torch.clamp(x0 - EPS, min=0)
    bim = torch.clamp(torch.min(torch.max(v, a), x0 + EPS), max=1)
    assert torch.equal(
        IFGSM(IFGSMConfig(eps=EPS, alpha=ALPHA, quantize=False)).step(x, grad, s), bim
    )
    # PGD: step, clamp to the eps-ball, clamp to [0, 1]
    delta = torch.clamp(x + sg * ALPHA * grad.sign() - x0, min=-EPS, max=EPS)
    pgd = torch.clamp(x0 + delta, min=0, max=1)
    assert torch.equal(PGD(PGDConfig(eps=EPS, alpha=ALPHA, quantize=False)).step(x, grad, s), pgd)
    # FGSM: one step of eps from the original (written as PGD's clamp: equal to float precision)
    fgsm = FGSM(FGSMConfig(eps=EPS, quantize=False)).step(x0, grad, s)
    assert torch.allclose(fgsm, torch.clamp(x0 + sg * EPS * grad.sign(), 0, 1), atol=1e-7)
    # MI-FGSM: the momentum lives in the state and carries over to the next step
    mi = MIFGSM(MIFGSMConfig(eps=EPS, alpha=ALPHA, decay=0.5, quantize=False))
    s.memory["g"] = torch.zeros_like(x0)
    x1 = mi.step(x, grad, s)
    x2 = mi.step(x1, -grad, s)
    g1 = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)
    g2 = 0.5 * g1 - g1
    assert torch.equal(s.memory["g"], g2)
    delta = torch.clamp(x1 + sg * ALPHA * g2.sign() - x0, min=-EPS, max=EPS)
    assert torch.equal(x2, torch.clamp(x0 + delta, min=0, max=1))


def test_quantised_steps_stay_on_the_grid_inside_the_ball(point) -> None:
    x0, x, grad = point
    x0 = quantize8(x0)
    s = _state(x0, EPS, True, True)
    for attack in (IFGSM(IFGSMConfig(eps=EPS, alpha=1.3 / 255)), PGD(PGDConfig(eps=EPS))):
        y = attack.step(quantize8(x), grad, s)
        assert torch.equal(y, quantize8(y))
        assert float((y - x0).abs().max()) <= EPS + 1e-6
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_a_new_step_runs_in_the_shared_loop(tiny, faces) -> None:
    """Any ``step`` plugs into the loop: samples leave as they succeed, the per-sample
    memory follows its samples when the batch shrinks, and the result is the loop's."""
    x = faces
    target = predict(tiny, x).argmin(1)
    cfg = IFGSMConfig(eps=24 / 255)  # the loop reads eps, targeted, margin, quantize, early_stop
    seen: list[torch.Tensor] = []

    def step(v: torch.Tensor, grad: torch.Tensor, s: Running) -> torch.Tensor:
        # each row of the memory is the batch position of its sample
        assert torch.equal(s.memory["who"], s.idx)
        seen.append(s.idx.clone())
        return clip_ball(v + s.sign * (1 / 255) * grad.sign(), s)

    r = iterate(tiny, x, target, step, cfg, steps=40, memory={"who": torch.arange(len(x))})
    assert len(seen) >= 2 and len(seen[-1]) < len(x)  # the batch shrank as samples succeeded
    assert r.success.all()
    assert len(set(r.steps.tolist())) > 1  # samples stopped at different steps
    assert torch.equal(r.success, predict(tiny, r.images).argmax(1) == target)
    assert float((r.images - x).abs().max()) <= 24 / 255 + 1e-6
    assert torch.equal(r.images, quantize8(r.images))
