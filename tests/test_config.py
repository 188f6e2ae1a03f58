"""Settings: YAML files, environment overrides, and clear rejection of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from deid.config import CONFIG_DIR, load_settings
from deid.errors import ConfigError


def test_shipped_configs_load() -> None:
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"default", "yaleb-mlp", "celeba-cnn"} <= set(names)
    for name in names:
        s = load_settings(name)
        assert s.attack.name in ("ifgsm", "realistic", "conceal")
    assert load_settings("yaleb-mlp").classifier.name == "yaleb-mlp"


def test_fractions_of_255_are_exact() -> None:
    s = load_settings()
    assert s.attack.eps == pytest.approx(16 / 255, abs=1e-12)
    assert s.attack.alpha == pytest.approx(2 / 255, abs=1e-12)


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEID_ATTACK__EPS", "8/255")
    monkeypatch.setenv("DEID_PIPELINE__DEVICE", "cpu")
    monkeypatch.setenv("DEID_DATA_DIR", "/somewhere")  # a process variable, not a setting
    s = load_settings()
    assert s.attack.eps == pytest.approx(8 / 255)
    assert s.pipeline.device == "cpu"
    # explicit overrides (CLI flags) beat the environment
    assert load_settings(overrides={"attack": {"eps": 0.01}}).attack.eps == 0.01


def test_switching_attack_drops_the_other_attacks_parameters() -> None:
    s = load_settings(overrides={"attack": {"name": "realistic"}})
    assert s.attack.name == "realistic" and s.attack.binary_steps >= 1


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"attack": {"eps": 0}}, ["eps", "greater than 0"]),
        ({"attack": {"eps": 1.5}}, ["eps", "less than or equal to 1"]),
        ({"attack": {"name": "fgsm-typo"}}, ["ifgsm", "realistic", "conceal"]),
        ({"detector": {"min_face_size": 2}}, ["min_face_size", "8"]),
        ({"detector": {"thresholds": [0.6, 1.2, 0.7]}}, ["thresholds", "(0, 1)"]),
        ({"pipeline": {"fallback": "swirl"}}, ["fallback", "pixelate"]),
        ({"pipeline": {"device": "tpu"}}, ["device", "cuda:N"]),
        ({"pipeline": {"crf": 60}}, ["crf", "51"]),
        ({"detector": {"unknown_key": 1}}, ["unknown_key", "Extra inputs"]),
    ],
)
def test_bad_values_name_the_field_and_the_rule(overrides: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(overrides=overrides)
    for w in words:
        assert w in str(e.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_settings(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(top)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("detectr:\n  min_face_size: 20\n")
    with pytest.raises(ConfigError, match="detectr"):
        load_settings(unknown)
