"""One registration per attack (issue 11): everything else is derived from the registry.

An attack is one module (config + class) and one :func:`register` line. The test below adds
an attack the way the README's "Extending deid" section does and runs it through the
registry, the settings (and the settings a service job carries), the command line's help
and the whole pipeline on a real photo with the real MTCNN; then removes it again.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import ClassVar, Literal

import pydantic
import pytest
import torch
from pydantic import Field
from torch import Tensor, nn

from deid.attacks import ATTACKS, DEFAULT_TARGET, build_attack, registry
from deid.attacks.base import AttackConfigBase, AttackResult, Budget
from deid.attacks.iterative import Running, clip_ball, iterate
from deid.attacks.registry import pipeline_attacks, register, unregister
from deid.cli import main as cli_main
from deid.config import Settings, load_settings
from deid.errors import ConfigError
from deid.io import read_image, write_image
from deid.pipeline import run
from deid.service.jobs import job_settings
from deid.targets import TARGET_MODES, TargetMode

from .conftest import scene


# --- the new attack: one module (these two classes) ... ----------------------------------
class RFGSMConfig(AttackConfigBase):
    """R+FGSM: a random sign step of ``alpha``, then a gradient sign step of ``eps - alpha``."""

    name: Literal["rfgsm-example"] = "rfgsm-example"
    default_target: ClassVar[TargetMode] = "nearest"
    eps: Budget = Field(16 / 255, gt=0.0, le=1.0)
    alpha: Budget = Field(8 / 255, gt=0.0, le=1.0)
    early_stop: bool = True


class RFGSM:
    """Tramer et al., "Ensemble Adversarial Training", https://arxiv.org/abs/1705.07204."""

    def __init__(self, cfg: RFGSMConfig | None = None) -> None:
        self.cfg = cfg or RFGSMConfig()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        return iterate(model, images, targets, self.step, self.cfg, steps=1, start=self.start)

    def start(self, s: Running) -> Tensor:
        return clip_ball(s.x0 + self.cfg.alpha * torch.randn_like(s.x0).sign(), s)

    def step(self, x: Tensor, grad: Tensor, s: Running) -> Tensor:
        return clip_ball(x + s.sign * (self.cfg.eps - self.cfg.alpha) * grad.sign(), s)


# --- ... and one registry line -------------------------------------------------------------
@pytest.fixture
def rfgsm() -> Iterator[str]:
    register(RFGSM, RFGSMConfig)
    try:
        yield "rfgsm-example"
    finally:
        unregister("rfgsm-example")


def _run_help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks (argparse also breaks at hyphens)
    with pytest.raises(SystemExit):
        cli_main(["run", "--help"])
    return capsys.readouterr().out


def test_everything_is_derived_from_the_registry(capsys, monkeypatch) -> None:
    configs = [e.config for e in ATTACKS.values()]
    # the live union (a registration after import, the built-in generators too, rebuilds it)
    assert list(typing.get_args(registry.AttackConfig)) == configs
    assert list(typing.get_args(Settings.model_fields["attack"].annotation)) == configs
    for name, (_, cfg) in ATTACKS.items():
        assert cfg.model_fields["name"].default == name
        assert DEFAULT_TARGET[name] == cfg.default_target in TARGET_MODES
    assert list(DEFAULT_TARGET) == list(ATTACKS)
    # `deid run --help` lists every attack the pipeline can run (all but the untargeted vat)
    assert pipeline_attacks() == [n for n in ATTACKS if n != "vat"]
    helptext = _run_help(capsys, monkeypatch)
    assert "ifgsm (default), " + ", ".join(pipeline_attacks()[1:]) + "\n" in helptext


def test_registration_is_checked() -> None:
    class Nameless(AttackConfigBase):
        default_target: ClassVar[TargetMode] = "nearest"

    class NoTarget(AttackConfigBase):
        name: Literal["no-target"] = "no-target"

    with pytest.raises(TypeError, match="name"):
        register(RFGSM, Nameless)
    with pytest.raises(TypeError, match="default_target"):
        register(RFGSM, NoTarget)
    with pytest.raises(ValueError, match="already registered"):
        register(RFGSM, ATTACKS["ifgsm"].config)
    assert "no-target" not in ATTACKS


def test_a_new_attack_is_one_module_and_one_registry_line(
    rfgsm, capsys, monkeypatch, tmp_path
) -> None:
    # the registry and its derived views
    assert ATTACKS[rfgsm] == (RFGSM, RFGSMConfig)
    assert DEFAULT_TARGET[rfgsm] == "nearest"
    assert f"advgan, replace, {rfgsm}\n" in _run_help(capsys, monkeypatch)
    # the settings (Settings was built before the registration: the union was rebuilt)
    s = load_settings(
        overrides={"pipeline": {"device": "cpu"}, "attack": {"name": rfgsm, "eps": "24/255"}}
    )
    assert isinstance(s.attack, RFGSMConfig) and s.attack.eps == pytest.approx(24 / 255)
    with pytest.raises(
        ConfigError, match=r"attack\.alpha: Input should be less than or equal to 1"
    ):
        load_settings(overrides={"attack": {"name": rfgsm, "alpha": 2.0}})
    # what a service job carries comes back as the same settings
    assert Settings.model_validate(job_settings(s)).attack == s.attack
    attack = build_attack(s.attack)
    assert isinstance(attack, RFGSM)

    # the attack itself: R+FGSM's two steps stay in the eps-ball, on the 8-bit grid
    x = torch.rand(2, 3, 8, 8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    r = attack(model, x, torch.tensor([1, 2]))
    assert float((r.images - x).abs().max()) <= 24 / 255 + 1e-6
    assert r.steps.max() <= 1

    # and the whole pipeline, on a real photo with the real MTCNN
    face = scene("astronaut_single_face.png")
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    write_image(src, face)
    report = run(src, out, s, progress=False)
    t = report["totals"]
    assert t["faces"] == 1 and t["unprotected_faces"] == 0, t
    assert report["settings"]["attack"]["name"] == rfgsm
    assert report["target_mode"] == "nearest"  # the config's default_target
    f = report["faces_detail"][0]
    assert f["action"].split(":")[0] in ("attacked", "obscured", "repaired"), f
    x1, y1, x2, y2 = f["region"]
    assert (read_image(out)[y1:y2, x1:x2] != face[y1:y2, x1:x2]).any()


def test_an_unregistered_attack_is_gone_again() -> None:
    register(RFGSM, RFGSMConfig)
    unregister("rfgsm-example")
    assert "rfgsm-example" not in ATTACKS and "rfgsm-example" not in DEFAULT_TARGET
    assert list(typing.get_args(Settings.model_fields["attack"].annotation)) == [
        e.config for e in ATTACKS.values()
    ]
    with pytest.raises(ConfigError, match=r"unknown attack 'rfgsm-example'"):
        load_settings(overrides={"attack": {"name": "rfgsm-example"}})
    with pytest.raises(pydantic.ValidationError):
        Settings(attack=RFGSMConfig())  # type: ignore[arg-type]
