"""Settings: YAML files, environment overrides, and clear rejection of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deid.config import CONFIG_DIR, Settings, load_settings
from deid.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_deid_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests set the DEID_ variables they need; none come from the caller's shell."""
    import os

    for key in os.environ:
        if key.startswith("DEID_") and key != "DEID_DATA_DIR":
            monkeypatch.delenv(key)


def test_shipped_configs_load() -> None:
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"default", "yaleb-mlp", "celeba-cnn"} <= set(names)
    for name in names:
        s = load_settings(name)
        assert s.attack.name in ("ifgsm", "realistic", "conceal", "advgan")
    assert load_settings("yaleb-mlp").classifier.name == "yaleb-mlp"
    fast = load_settings("fast").pipeline
    assert (fast.verify_detect, fast.judge_every, fast.verify) == ("none", 5, True)


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
        ({"detector": {"unknown_key": 1}}, ["detector.unknown_key", "unknown key"]),
        ({"detector": {"name": "yolo"}}, ["detector.name", "unknown detector 'yolo'", "mtcnn"]),
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


def _yaml(tmp_path: Path, text: str, name: str = "my.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_configs_load_as_their_file_over_the_defaults() -> None:
    """Layering configs/default.yaml under a --config file changes none of the shipped ones:
    each loads to what the file alone over deid's defaults gives."""
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        alone = Settings.model_validate(yaml.safe_load(path.read_text()))
        assert load_settings(path.stem) == alone, path.name


def test_partial_sections_merge_over_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = load_settings()
    # no name: the current attack's, with default.yaml's other keys (EOT on)
    s = load_settings(_yaml(tmp_path, "attack:\n  eps: 8/255\ndetector:\n  min_face_size: 30\n"))
    assert (s.attack.name, s.attack.eps) == ("ifgsm", pytest.approx(8 / 255))
    assert s.attack.eot == default.attack.eot and s.attack.eot.enabled
    assert (s.attack.steps, s.attack.target) == (20, "least-likely")
    assert s.detector.min_face_size == 30 and s.detector.tile == default.detector.tile
    # the same name as the default's: merged too (EOT stays on)
    s = load_settings(_yaml(tmp_path, "attack:\n  name: ifgsm\n  steps: 5\n"))
    assert s.attack.steps == 5 and s.attack.eot.enabled and s.attack.eps == default.attack.eps
    assert load_settings(overrides={"attack": {"name": "ifgsm"}}).attack == default.attack
    # another attack starts from its own defaults (none of ifgsm's keys carry over)
    s = load_settings(_yaml(tmp_path, "attack:\n  name: realistic\n  steps: 7\n"))
    assert (s.attack.name, s.attack.steps, s.attack.target) == ("realistic", 7, None)
    # an empty section is no section; the environment and overrides merge on top
    assert load_settings(_yaml(tmp_path, "attack:\ndetector:\n")) == default
    monkeypatch.setenv("DEID_ATTACK__STEPS", "9")
    s = load_settings(_yaml(tmp_path, "attack:\n  eps: 8/255\n"), {"attack": {"alpha": 0.01}})
    assert (s.attack.steps, s.attack.alpha, s.attack.eps) == (9, 0.01, pytest.approx(8 / 255))
    assert s.attack.eot.enabled


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("attack:\n  epz: 8/255\n", ["attack.epz: unknown key for attack 'ifgsm'", "'eps'"]),
        ("attack:\n  name: ifgsm\n  epz: 1\n", ["attack.epz: unknown key", "'eps'"]),
        ("attack:\n  name: realistic\n  alpha: 1\n", ["for attack 'realistic'", "'kappa'"]),
        ("attack:\n  eot:\n    sample: 3\n", ["attack.eot.sample: unknown key", "'samples'"]),
        ("detectr:\n  min_face_size: 20\n", ["detectr: unknown key", "'detector'"]),
        ("attack:\n  name: deepdream\n", ["attack.name: unknown attack 'deepdream'", "ifgsm"]),
    ],
)
def test_unknown_keys_are_named_with_what_is_expected(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    msg = str(e.value)
    assert f"{path}: " in msg and "discriminator" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_bad_values_name_the_flag_file_or_variable_they_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = {"attack.eps": "--eps", "attack.steps": "--steps", "attack.name": "--attack"}

    def message(*args: object, **kwargs: object) -> str:
        with pytest.raises(ConfigError) as e:
            load_settings(*args, **kwargs)  # type: ignore[arg-type]
        assert "default.yaml" not in str(e.value), e.value
        return str(e.value)

    assert "--eps: Input should be less than or equal to 1 (got 2)" in message(
        overrides={"attack": {"eps": 2}}, flags=flags
    )
    assert "--steps: Input should be greater than or equal to 1 (got 0)" in message(
        overrides={"attack": {"steps": 0}}, flags=flags
    )
    assert "--attack: unknown attack 'nope'; available: [" in message(
        overrides={"attack": {"name": "nope"}}, flags=flags
    )
    # an override no flag is named for (the HTTP API's settings): its setting
    assert "attack.eps: Input should be less than or equal to 1" in message(
        overrides={"attack": {"eps": 2}}
    )
    bad = _yaml(tmp_path, "attack:\n  steps: 0\n")
    assert f"{bad}: attack.steps: Input should be greater than or equal to 1" in message(bad)
    monkeypatch.setenv("DEID_ATTACK__EPS", "1.5")
    assert "DEID_ATTACK__EPS (attack.eps): Input should be less than or equal to 1 (got 1.5)" in (
        message()
    )
    # a flag wins over the variable: only the flag's value counts
    assert load_settings(overrides={"attack": {"eps": 0.1}}, flags=flags).attack.eps == 0.1
    monkeypatch.delenv("DEID_ATTACK__EPS")
    # a rule over several keys names where each of them came from
    monkeypatch.setenv("DEID_SERVICE__TIME_LIMIT", "5000")
    assert "service: " in (m := message()) and "DEID_SERVICE__TIME_LIMIT" in m, m


def test_a_job_spec_without_limits_carries_the_service_defaults() -> None:
    """The service's limits have one set of defaults: a job spec built without them (a test,
    a script) gets the ones ``service`` has, which keep soft < hard < visibility timeout."""
    from deid.config import ServiceConfig
    from deid.service.jobs import JobSpec

    job_id = "0" * 32
    spec = JobSpec(
        id=job_id,
        kind="video",
        input="/r/a.mp4",
        output="/r/o.mp4",
        workdir=f"/r/.deid-job-{job_id}",
        settings={},
    )
    limits = ("shard_files", "max_deliveries", "soft_time_limit", "time_limit")
    service = ServiceConfig()
    assert {k: getattr(spec, k) for k in limits} == {k: getattr(service, k) for k in limits}
    ServiceConfig(**{k: getattr(spec, k) for k in limits})  # a valid service section


def test_track_score_is_a_lower_bar_for_videos() -> None:
    from deid.config import DetectorConfig

    assert DetectorConfig().track_score is None  # off by default since the second look
    d = DetectorConfig(track_score=0.6)
    t = d.for_tracks()
    assert t.min_score == d.track_score < d.min_score and t.confirm_score == d.min_score
    # MTCNN's last stage lets the weaker faces through; the other stages stay as they are
    assert t.thresholds[:2] == d.thresholds[:2] and t.thresholds[2] == min(
        d.thresholds[2], d.track_score
    )
    off = DetectorConfig(track_score=None)
    assert off.for_tracks() is off
    # a lower min_score than track_score turns it off
    high = DetectorConfig(min_score=0.5, track_score=0.6)
    assert high.for_tracks() is high
    with pytest.raises(ValidationError, match="track_score"):
        DetectorConfig(track_score=1.5)
