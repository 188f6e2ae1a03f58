"""The attack library's contract, parametrised over the whole registry (issue 5).

Every registered attack, targeted and untargeted where it allows: output shape, dtype,
device and range, the eps-ball where the attack is bounded, the success mask equal to the
argmax check on the returned images, the four norms recorded, the 8-bit grid; plus the
black-box attacks' query-only interface and the pipeline's view of the registry.
"""

from __future__ import annotations

import math

import pydantic
import pytest
import torch

from deid.attacks import ATTACKS, DEFAULT_TARGET
from deid.attacks.base import perturbation_norms, predict, quantize8
from deid.attacks.query import QueryModel
from deid.config import load_settings
from deid.errors import ConfigError
from deid.io import read_image, write_image
from deid.pipeline import run
from deid.targets import choose_targets

from .conftest import scene

# Small budgets so the whole registry runs in well under a minute on 2 CPU cores.
FAST: dict[str, dict] = {
    "ifgsm": {"eps": 32 / 255, "steps": 20},
    "illc": {"eps": 32 / 255, "steps": 20},
    "fgsm": {"eps": 32 / 255},
    "pgd": {"eps": 32 / 255, "steps": 20},
    "mifgsm": {"eps": 32 / 255, "steps": 20},
    "realistic": {"binary_steps": 2, "steps": 30, "lr": 0.05},
    "cw": {"binary_steps": 2, "steps": 30, "lr": 0.05},
    "conceal": {"steps": 20},
    "lbfgs": {"search_steps": 2, "max_iter": 10, "c_init": 0.1},
    "deepfool": {"steps": 20, "overshoot_mode": "step"},
    "jsma": {"gamma": 0.1},
    "spsa": {"eps": 32 / 255, "steps": 10, "samples": 32, "lr": 0.05},
    "feature": {"eps": 32 / 255, "max_iter": 15},
    "ead": {"binary_steps": 2, "steps": 30, "c_init": 1.0},
    "vat": {"eps": 8.0},
    "onepixel": {"pixels": 3, "steps": 5, "popsize": 20},
    "universal": {"eps": 32 / 255, "max_passes": 2, "deepfool_steps": 5},
}
# L-inf bounded attacks (radius cfg.eps); vat is L2-bounded; onepixel changes few pixels.
LINF = {"ifgsm", "illc", "fgsm", "pgd", "mifgsm", "spsa", "feature", "universal"}
BLACK_BOX = {"spsa", "onepixel"}
UNTARGETED_ONLY = {"vat"}
# attacks that need a generator trained against the classifier (not the tiny net, and only
# yaleb-mlp has a shipped one): their contract and a pipeline run are tested with a
# generator of their own and the shipped one (tests/test_advgan.py); `replace` is a face
# generator trained on 64 px CelebA crops, tested in tests/test_replace.py
TRAINED = {"advgan", "replace"}
# what each attack must reach on the tiny net (the rest: the mask must merely be right)
STRONG = {"ifgsm", "illc", "pgd", "mifgsm", "realistic", "cw", "conceal", "lbfgs", "deepfool",
          "jsma", "ead"}  # fmt: skip
N = 6


def test_fast_covers_the_registry() -> None:
    assert set(FAST) | TRAINED == set(ATTACKS)
    assert set(DEFAULT_TARGET) == set(ATTACKS)
    # the fifteen attacks, by name
    assert {"fgsm", "ifgsm", "illc", "lbfgs", "deepfool", "jsma", "spsa", "cw", "feature",
            "ead", "vat", "mifgsm", "pgd", "onepixel", "universal"} <= set(ATTACKS)  # fmt: skip


CASES = [
    pytest.param(name, targeted, id=f"{name}-{'targeted' if targeted else 'untargeted'}")
    for name in sorted(set(ATTACKS) - TRAINED)
    for targeted in (True, False)
    if not (targeted and name in UNTARGETED_ONLY)
]


@pytest.mark.parametrize(("name", "targeted"), CASES)
def test_contract(name: str, targeted: bool, tiny, faces, device) -> None:
    cls, cfg_cls = ATTACKS[name]
    attack = cls(cfg_cls(**FAST[name], targeted=targeted))
    model = tiny.to(device)
    x = faces[:N].to(device)
    logits0 = predict(model, x)
    labels = choose_targets(logits0, "nearest") if targeted else logits0.argmax(1)
    r = attack(model, x, labels)

    assert r.images.shape == x.shape and r.images.dtype == x.dtype and r.images.device == x.device
    assert float(r.images.min()) >= 0.0 and float(r.images.max()) <= 1.0
    assert r.success.shape == (N,) and r.success.dtype == torch.bool
    assert r.steps.shape == (N,) and r.steps.dtype == torch.long
    # the mask is exactly the argmax check on what is returned, and logits belong to it
    again = predict(model, r.images)
    top = again.argmax(1)
    assert torch.equal(r.success, top == labels if targeted else top != labels)
    assert torch.equal(r.logits.argmax(1), top)
    assert torch.allclose(r.logits, again, atol=1e-4)
    # the four norms, recorded per sample and measured on the returned images
    want = perturbation_norms(x, r.images)
    for k in ("l0", "l1", "l2", "linf"):
        assert r.norms[k].shape == (N,)
        assert torch.allclose(r.norms[k], want[k], atol=1e-5)
    # the budget where the attack is bounded
    cfg = attack.cfg
    if name in LINF:
        assert float(r.norms["linf"].max()) <= cfg.eps + 1e-6
    if name == "vat":  # L2 ball, then clipping (shrinks) and rounding (<= half a level each)
        assert float(r.norms["l2"].max()) <= cfg.eps + math.sqrt(x[0].numel()) * 0.5 / 255
    if name == "onepixel":
        assert float(r.norms["l0"].max()) <= cfg.pixels * x.shape[1]
    # 8-bit inputs and quantize: what is returned is what a file stores
    assert torch.equal(quantize8(r.images), r.images)
    if name in BLACK_BOX:
        assert r.queries is not None and r.queries.shape == (N,) and bool((r.queries > 0).all())
        assert torch.equal(r.queries, r.steps)
    if name in STRONG:
        assert r.success_rate >= 0.5, (name, r.success.tolist())
    # a sample that succeeded was changed, unless it succeeded on the clean image
    clean_ok = logits0.argmax(1) == labels if targeted else logits0.argmax(1) != labels
    assert bool((r.norms["l0"][~clean_ok & r.success] > 0).all())


class _NoGrad(torch.nn.Module):
    """Refuses to run with gradients on: what a query-only attack must never need."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled(), "a black-box attack asked for gradients"
        assert not x.requires_grad
        return self.inner(x)


@pytest.mark.parametrize("name", sorted(BLACK_BOX))
def test_black_box_attacks_only_query(name: str, tiny, faces) -> None:
    cls, cfg_cls = ATTACKS[name]
    x = faces[:4]
    y = predict(tiny, x).argmax(1)
    q = QueryModel(_NoGrad(tiny))
    r = cls(cfg_cls(**FAST[name], targeted=False))(q, x, y)
    # every image evaluated was counted, and the per-sample counts add up to the total
    assert int(r.queries.sum()) == q.queries > 0
    # wrapping happens at the boundary: a plain module gives the same result
    r2 = cls(cfg_cls(**FAST[name], targeted=False))(_NoGrad(tiny), x, y)
    assert torch.equal(r.images, r2.images) and torch.equal(r.queries, r2.queries)


def test_query_model_gives_no_gradients(tiny, faces) -> None:
    q = QueryModel(tiny, "probs")
    x = faces[:2].clone().requires_grad_(True)
    out = q(x)
    assert not out.requires_grad and out.grad_fn is None
    assert torch.allclose(out.sum(1), torch.ones(2))
    assert not hasattr(q, "parameters") and not hasattr(q, "inner")
    assert QueryModel(tiny, "labels")(faces[:3]).dtype == torch.long
    with pytest.raises(TypeError, match=r"nn\.Module"):
        QueryModel(q)  # type: ignore[arg-type]


def test_vat_is_untargeted_only() -> None:
    with pytest.raises(pydantic.ValidationError, match="untargeted only"):
        ATTACKS["vat"][1](targeted=True)


def test_feature_adversary_uses_given_guides(tiny, faces) -> None:
    """With guide images of class t, the adversary's embedding moves towards the guide's."""
    cls, cfg_cls = ATTACKS["feature"]
    x = faces[:4]
    y = predict(tiny, x).argmax(1)
    guides = faces[[2, 4, 6, 0]]  # another identity each
    t = predict(tiny, guides).argmax(1)
    assert bool((t != y).all())
    r = cls(cfg_cls(eps=32 / 255, max_iter=20))(tiny, x, t, guides=guides)
    g = tiny.embed(guides)
    before = (tiny.embed(x) - g).norm(dim=1)
    after = (tiny.embed(r.images) - g).norm(dim=1)
    assert bool((after < 0.8 * before).all())
    assert float(r.norms["linf"].max()) <= 32 / 255 + 1e-6


def test_universal_perturbation_is_one_for_all(tiny, faces) -> None:
    cls, cfg_cls = ATTACKS["universal"]
    x = faces
    r = cls(cfg_cls(eps=32 / 255, targeted=False, quantize=False))(
        tiny, x, predict(tiny, x).argmax(1)
    )
    d = r.images - x
    inside = (r.images > 0) & (r.images < 1)  # where nothing was clipped, v is shared
    both = inside & inside[0]
    assert torch.allclose(d[both], d[0].expand_as(d)[both], atol=1e-6)
    assert float(d.abs().amax()) > 0
    assert bool(r.success.any())  # one v for four identities: it fools some of them


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_is_a_pipeline_setting(name: str) -> None:
    """`deid run --attack NAME` goes through these settings: every attack validates there,
    targeted (the pipeline passes each face's target), and vat is refused with a reason."""
    if name in UNTARGETED_ONLY:
        with pytest.raises(ConfigError, match="targeted"):
            load_settings(overrides={"attack": {"name": name}})
        return
    s = load_settings(overrides={"attack": {"name": name}})
    assert s.attack.name == name and s.attack.targeted
    with pytest.raises(ConfigError, match="targeted: true"):
        load_settings(overrides={"attack": {"name": name, "targeted": False}})


# Small budgets so that every attack runs through the whole pipeline in seconds.
SMALL = {
    "ifgsm": {"steps": 5},
    "illc": {"steps": 5},
    "mifgsm": {"steps": 5},
    "pgd": {"steps": 5},
    "lbfgs": {"search_steps": 2, "max_iter": 10},
    "deepfool": {"steps": 10},
    "feature": {"max_iter": 10},
    "universal": {"max_passes": 1},
    "cw": {"binary_steps": 2, "steps": 20},
    "ead": {"binary_steps": 2, "steps": 20},
    "spsa": {"steps": 3, "samples": 8},
    "onepixel": {"steps": 2, "popsize": 10},
}


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - UNTARGETED_ONLY - TRAINED))
def test_every_attack_runs_end_to_end(name: str, tmp_path) -> None:
    """`deid run --attack NAME` on a real photo: the face is attacked or, where the small
    budget fails, obscured; either way no face is written as it was."""
    face = scene("astronaut_single_face.png")
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    write_image(src, face)
    s = load_settings(
        overrides={"pipeline": {"device": "cpu"}, "attack": {"name": name, **SMALL.get(name, {})}}
    )
    report = run(src, out, s, progress=False)
    t = report["totals"]
    assert t["faces"] == 1 and t["unprotected_faces"] == 0, t
    f = report["faces_detail"][0]
    # attacked; obscured where the attack failed; repaired where the written file still
    # showed the original identity
    kind = f["action"].split(":")[0]
    assert kind == ("attacked" if f["success"] else "obscured") or kind == "repaired", f
    x1, y1, x2, y2 = f["region"]
    assert (read_image(out)[y1:y2, x1:x2] != face[y1:y2, x1:x2]).any()
