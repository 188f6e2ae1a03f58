"""The attack contract, on every registered attack, plus each attack's own behaviour."""

from __future__ import annotations

import pytest
import torch

from deid.attacks import (
    ATTACKS,
    IFGSM,
    Conceal,
    ConcealConfig,
    IFGSMConfig,
    Realistic,
    RealisticConfig,
)
from deid.attacks.base import check_images, is_success, predict, quantize8
from deid.errors import ShapeError
from deid.targets import choose_targets

FAST = {
    "ifgsm": {"eps": 32 / 255, "steps": 20},
    "realistic": {"binary_steps": 3, "steps": 40, "lr": 0.05},
    "conceal": {"steps": 20},
}


@pytest.mark.parametrize("name", sorted(FAST))  # the library: test_attack_library.py
def test_contract(name: str, tiny, faces, device) -> None:
    cls, cfg_cls = ATTACKS[name]
    attack = cls(cfg_cls(**FAST[name]))
    model = tiny.to(device)
    x = faces.to(device)
    targets = choose_targets(predict(model, x), "nearest")
    r = attack(model, x, targets)
    assert r.images.shape == x.shape and r.images.dtype == x.dtype and r.images.device == x.device
    assert float(r.images.min()) >= 0.0 and float(r.images.max()) <= 1.0
    assert r.success.shape == (len(x),) and r.success.dtype == torch.bool
    assert r.steps.shape == (len(x),) and r.steps.dtype == torch.long
    # the mask is exactly "the model's top class on the returned images is the target"
    again = predict(model, r.images).argmax(1)
    assert torch.equal(r.success, again == targets)
    assert torch.equal(r.logits.argmax(1), again)
    for k in ("l0", "l1", "l2", "linf"):
        assert r.norms[k].shape == (len(x),)
    assert torch.allclose(r.norms["linf"], (r.images - x).flatten(1).abs().amax(1))
    if hasattr(attack.cfg, "eps") and attack.cfg.eps is not None and attack.cfg.eps < 1:
        assert float((r.images - x).abs().max()) <= attack.cfg.eps + 1e-6
    assert r.success_rate > 0.5  # a random tiny net is easy to fool
    # quantised output: what gets written is what was checked
    if attack.cfg.quantize:
        assert torch.equal(quantize8(r.images[r.success]), r.images[r.success])


def test_ifgsm_matches_the_seed_formula(tiny, faces) -> None:
    """Without early stop and quantisation, the iterates are exactly the seed's I-FGSM."""
    eps, alpha, steps = 8 / 255, 1 / 255, 5
    t = torch.tensor([1, 2, 3, 0, 1, 2, 3, 0])
    r = IFGSM(IFGSMConfig(eps=eps, alpha=alpha, steps=steps, early_stop=False, quantize=False))(
        tiny, faces, t
    )
    x = faces.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(tiny(x), t, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
        x = torch.min(torch.max(x.detach() - alpha * g.sign(), faces - eps), faces + eps).clamp(
            0, 1
        )
    assert torch.allclose(r.images, x, atol=1e-6)
    assert r.steps.tolist() == [steps] * len(t)


def test_ifgsm_early_stop_per_sample(tiny, faces) -> None:
    logits = predict(tiny, faces)
    t = choose_targets(logits, "nearest")
    r = IFGSM(IFGSMConfig(eps=32 / 255, steps=50))(tiny, faces, t)
    assert r.success.all()
    # samples stop at different steps, and no sample steps after succeeding
    assert r.steps.min() < r.steps.max() or r.steps.max() <= 1
    # starting from the model's own prediction succeeds at step 0
    r0 = IFGSM(IFGSMConfig())(tiny, faces, logits.argmax(1))
    assert r0.success.all() and int(r0.steps.sum()) == 0 and torch.equal(r0.images, faces)


def test_untargeted_leaves_the_true_class(tiny, faces) -> None:
    y = predict(tiny, faces).argmax(1)
    r = IFGSM(IFGSMConfig(targeted=False, eps=32 / 255, steps=20))(tiny, faces, y)
    assert torch.equal(r.success, predict(tiny, r.images).argmax(1) != y)
    assert r.success.float().mean() > 0.5


def test_margin_makes_success_stricter(tiny, faces) -> None:
    t = choose_targets(predict(tiny, faces), "least-likely")
    r = IFGSM(IFGSMConfig(eps=64 / 255, steps=40, margin=2.0))(tiny, faces, t)
    ok = is_success(r.logits, t, True, 2.0)
    assert torch.equal(ok, r.success)
    top2 = r.logits.topk(2, 1).values
    assert ((top2[:, 0] - top2[:, 1])[r.success] > 2.0).all()


def test_realistic_is_small_and_checked_after_rounding(tiny, faces) -> None:
    t = choose_targets(predict(tiny, faces), "nearest")
    r = Realistic(RealisticConfig(binary_steps=4, steps=60, lr=0.02))(tiny, faces, t)
    assert r.success.float().mean() >= 0.75
    ifg = IFGSM(IFGSMConfig(eps=32 / 255, steps=20))(tiny, faces, t)
    both = r.success & ifg.success
    # minimal L2: smaller than the sign-step attack's on the same faces and targets
    assert r.norms["l2"][both].mean() < ifg.norms["l2"][both].mean()
    assert torch.equal(quantize8(r.images), r.images)
    # a failed sample comes back unchanged
    assert torch.equal(r.images[~r.success], faces[~r.success])


def test_conceal_replaces_the_face(tiny, faces) -> None:
    t = choose_targets(predict(tiny, faces), "least-likely")
    r = Conceal(ConcealConfig(steps=30))(tiny, faces, t)
    assert r.success.all()
    # the face is gone: far from the original in every sense
    assert float(r.norms["linf"].min()) > 0.5
    assert float((r.images - faces).abs().mean()) > 0.2


def test_inputs_are_checked(tiny, faces) -> None:
    with pytest.raises(ShapeError):
        check_images(faces[0], torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        IFGSM()(tiny, faces * 2, torch.zeros(len(faces), dtype=torch.long))
    with pytest.raises(ShapeError):
        IFGSM()(tiny, faces, torch.zeros(3, dtype=torch.long))


def test_attack_leaves_model_as_it_was(tiny, faces) -> None:
    tiny.train()
    IFGSM(IFGSMConfig(steps=2))(tiny, faces, torch.zeros(len(faces), dtype=torch.long))
    assert tiny.training
    assert all(p.requires_grad for p in tiny.parameters())
    assert all(p.grad is None for p in tiny.parameters())


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny, faces) -> None:
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    t = torch.tensor([1, 2, 3, 0, 1, 2, 3, 0])
    cfg = IFGSMConfig(eps=8 / 255, steps=5, early_stop=False)
    a = IFGSM(cfg)(tiny, faces, t)
    b = IFGSM(cfg)(tiny.cuda(), faces.cuda(), t.cuda())
    assert (a.images - b.images.cpu()).abs().max() <= 2 / 255
