"""Lower precision in an attack's gradient passes (``pipeline.precision``): faster where the
hardware has it, and never the basis of a decision near its threshold."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from deid.attacks import IFGSM, IFGSMConfig
from deid.attacks.base import (
    DECISION_BAND,
    decision_logits,
    is_success,
    logit_gap,
    predict,
    quantize8,
)
from deid.attacks.eot import EOTConfig
from deid.config import load_settings
from deid.errors import ConfigError
from deid.models import load_classifier
from deid.models.precision import native_bfloat16, resolve_precision
from deid.targets import choose_targets


def test_resolve_precision() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("float32", cpu) is None
    assert resolve_precision("bfloat16", cpu) is torch.bfloat16
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if native_bfloat16(cpu) else None)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("float16", cpu)


def test_the_setting_is_validated_and_read_from_the_environment(monkeypatch) -> None:
    assert load_settings().pipeline.precision == "auto"
    monkeypatch.setenv("DEID_PIPELINE__PRECISION", "float32")
    assert load_settings().pipeline.precision == "float32"
    monkeypatch.setenv("DEID_PIPELINE__PRECISION", "half")
    with pytest.raises(ConfigError, match="precision"):
        load_settings()


def test_the_low_precision_view_is_a_copy_that_is_not_saved(tiny, faces, tmp_path) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    assert tiny.fast() is tiny
    tiny.set_gradient_precision(torch.bfloat16)
    view = tiny.fast()
    assert view is not tiny and not view.training
    exact, low = predict(tiny, faces), predict(view, faces)
    assert exact.dtype == low.dtype == torch.float32
    assert not torch.equal(exact, low)  # bfloat16 really ran
    assert torch.allclose(exact, low, atol=0.1 * float(exact.abs().max()))
    assert torch.equal(exact.argmax(1), low.argmax(1))
    # the classifier itself is untouched: same weights, same state dict, float32
    after = tiny.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    tiny.save(tmp_path / "c.pt")
    assert set(torch.load(tmp_path / "c.pt", weights_only=True)["state_dict"]) == set(
        tiny.net.state_dict()
    )
    # bound to alignments, the view stays bound (per-face early stop selects subsets)
    theta = torch.eye(2, 3).expand(len(faces), 2, 3)
    bound = tiny.bind(theta)
    assert bound.fast() is not bound
    assert bound.fast().select(torch.tensor([1, 3]))(faces[[1, 3]]).shape == (2, 4)
    tiny.set_gradient_precision(None)
    assert tiny.fast() is tiny and tiny.bind(theta).fast().classifier is tiny


class _Linear(nn.Module):
    """Logits = 10 x the mean of each channel: a model whose logits a test can set."""

    def forward(self, x: Tensor) -> Tensor:
        return 10.0 * x.mean((2, 3))


class _Liar(nn.Module):
    """A view that says the target (class 0) is ``lie`` logits nearer winning than it is."""

    def __init__(self, exact: nn.Module, lie: float) -> None:
        super().__init__()
        self.exact = exact
        self.lie = lie

    def forward(self, x: Tensor) -> Tensor:
        z = self.exact(x)
        return z + self.lie * nn.functional.one_hot(torch.tensor(0), z.shape[1])


class _Checked(nn.Module):
    """The exact model (counting the faces it classifies) with :class:`_Liar` as its view."""

    def __init__(self, lie: float) -> None:
        super().__init__()
        self.net = _Linear()
        self.view = _Liar(self.net, lie)
        self.asked = 0

    def forward(self, x: Tensor) -> Tensor:
        self.asked += len(x)
        return self.net(x)

    def fast(self) -> nn.Module:
        return self.view


@pytest.mark.parametrize("eot", [False, True])
def test_a_face_stops_only_when_the_exact_model_agrees(eot) -> None:
    """The view errs by less than the decision band: it calls faces that lose by 0.1-0.35
    logits winners. Those verdicts are near the threshold, so the exact model is asked; it
    says no, and no face may stop or be reported as a success (eps 1/255 cannot close the
    gap)."""
    x = torch.zeros(6, 3, 8, 8)
    x[:, 0] = 128 / 255
    x[:, 1] = (128 + torch.tensor([4, 5, 6, 7, 8, 9]) / 1.0).view(6, 1, 1) / 255
    exact = _Linear()(x)
    won_by = -logit_gap(exact, torch.zeros(6, dtype=torch.long), True)
    assert bool((won_by < -0.15).all() and (won_by > -0.9 * DECISION_BAND + 0.08).all())
    model = _Checked(lie=0.9 * DECISION_BAND).eval()
    cfg = IFGSMConfig(
        eps=1 / 255, alpha=1 / 255, steps=3, eot=EOTConfig(enabled=eot, margin=0.0, robust=0.01)
    )
    r = IFGSM(cfg)(model, x, torch.zeros(6, dtype=torch.long))
    assert model.asked >= len(x)  # the exact model was asked about every one
    assert not bool(r.success.any())
    assert r.steps.tolist() == [3] * len(x)  # nobody stopped early
    assert torch.allclose(r.logits, _Linear()(r.images), atol=1e-5)  # the exact logits


def test_screened_decisions_are_the_exact_models_and_cheaper(data_dir) -> None:
    """On 256 held-out CelebA faces with random targets (clean: most far from winning), the
    bfloat16 screen decides at margins 0 and 2 as float32 does, and float32 classifies only
    the faces near a threshold; the rows it did not classify are within the band."""
    from deid.eval.common import dataset_of, sample_test

    model = load_classifier("celeba-cnn")
    x, _ = sample_test(dataset_of(model), 256, seed=5)
    exact = predict(model, x)
    t = choose_targets(exact, "random", torch.Generator().manual_seed(5))
    t[:64] = exact[:64].argmax(1)  # and some that have "won" already, by various margins
    assert torch.equal(decision_logits(model, x, t, True, (0.0, 2.0)), predict(model, x))
    model.set_gradient_precision(torch.bfloat16)
    asked = []
    model.register_forward_pre_hook(lambda m, a: asked.append(len(a[0])))
    screened = decision_logits(model, x, t, True, (0.0, 2.0))
    assert 0 < sum(asked) < len(x) // 4  # a few near a threshold, not all
    for m in (0.0, 2.0):
        assert torch.equal(is_success(screened, t, True, m), is_success(exact, t, True, m))
    assert float((screened - exact).abs().max()) < DECISION_BAND / 4
    assert not torch.equal(screened, exact)  # bfloat16 really decided some


def test_bfloat16_attack_on_real_faces_reports_what_float32_sees(data_dir) -> None:
    """I-FGSM with EOT on 16 held-out CelebA faces, gradients in bfloat16: the success and
    logits it returns are the float32 classifier's on the 8-bit pixels it returns."""
    from deid.eval.common import dataset_of, sample_test

    model = load_classifier("celeba-cnn")
    x, _ = sample_test(dataset_of(model), 16, seed=3)
    x = x.float()
    t = choose_targets(predict(model, x), "least-likely")
    model.set_gradient_precision(torch.bfloat16)
    r = IFGSM(IFGSMConfig(steps=20, eot=EOTConfig(enabled=True)))(model, x, t)
    exact = predict(model, quantize8(r.images))
    assert torch.allclose(r.logits, exact, atol=DECISION_BAND / 4)  # bfloat16's, far away
    assert torch.equal(r.success, exact.argmax(1) == t)
    assert float(r.success.float().mean()) >= 0.9
    assert float((r.images - x).abs().max()) <= 16 / 255 + 1e-6


def test_folding_the_batch_norms_keeps_the_function(tiny, faces) -> None:
    import copy

    from deid.models.precision import fold_batchnorm

    net = fold_batchnorm(copy.deepcopy(tiny.net).eval())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in tiny.net.modules())  # a copy was folded
    z = tiny.prepare(faces)
    assert torch.allclose(net(z), tiny.net(z), atol=1e-4)


def test_the_low_precision_attack_runs_on_the_device(tiny, faces, device) -> None:
    """bfloat16 gradient passes on the test device (``--device cuda`` on a GPU machine)."""
    model = tiny.to(device)
    model.set_gradient_precision(torch.bfloat16)
    x = faces.to(device)
    t = choose_targets(predict(model, x), "nearest")
    r = IFGSM(IFGSMConfig(eps=32 / 255, steps=20, eot=EOTConfig(enabled=True)))(model, x, t)
    assert r.images.device == x.device and r.images.dtype == torch.float32
    exact = predict(model, quantize8(r.images))
    assert torch.equal(r.success, exact.argmax(1) == t)
    assert bool(r.success.float().mean() >= 0.5)


def test_the_report_says_which_precision_the_gradient_passes_ran_in(tmp_path, data_dir) -> None:
    """A run's report records what ``pipeline.precision`` resolved to on its device."""
    from deid.pipeline import run

    src = data_dir / "scenes" / "astronaut_single_face.png"
    for name in ("float32", "bfloat16"):
        settings = load_settings(
            overrides={"pipeline": {"device": "cpu", "precision": name, "verify": False}}
        )
        report = run(src, tmp_path / f"out_{name}.png", settings, progress=False)
        assert report["gradient_precision"] == name
        assert report["totals"]["faces"] == 1
