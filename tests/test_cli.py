"""The command line on bad input: a clear message, a non-zero exit, nothing at the output path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deid.cli import main
from deid.io import read_image, write_image, write_video

from .conftest import scene
from .test_io import restamp


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(6)]
    path = tmp_path / "clip.mp4"
    write_video(path, frames, 10)
    return path


def _fails(capsys: pytest.CaptureFixture[str], args: list[str], code: int, *words: str) -> str:
    assert main(args) == code
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    return err


def _nothing_at(path: Path) -> None:
    assert not path.exists()
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.stem}")]
    assert leftovers == []


def test_missing_input(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.mp4"
    _fails(capsys, ["run", str(tmp_path / "nope.mp4"), "-o", str(out)], 2, "nope.mp4")
    _nothing_at(out)


def test_text_file_named_mp4(tmp_path: Path, capsys) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 50)
    out = tmp_path / "out.mp4"
    _fails(
        capsys,
        ["run", str(fake), "-o", str(out), "--classifier", "yaleb-mlp"],
        2,
        "expected a video",
    )
    _nothing_at(out)


def test_truncated_video(tmp_path: Path, clip: Path, capsys) -> None:
    cut = tmp_path / "cut.mp4"
    data = clip.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out.mp4"
    assert main(["run", str(cut), "-o", str(out), "--classifier", "yaleb-mlp", "--quiet"]) == 2
    assert "cut.mp4" in capsys.readouterr().err
    _nothing_at(out)


def test_video_whose_frames_share_a_timestamp_is_refused_before_the_models_load(
    tmp_path: Path, clip: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deid.pipeline

    def no_models(*args: object) -> None:
        raise AssertionError("the models loaded for an input that is refused")

    monkeypatch.setattr(deid.pipeline.Resources, "load", no_models)
    bad = restamp(clip, tmp_path / "frozen.mkv", [0] * 6)
    out = tmp_path / "out.mkv"
    _fails(
        capsys,
        ["run", str(bad), "-o", str(out), "--classifier", "yaleb-mlp", "--quiet"],
        2,
        "frozen.mkv",
        "5 of its 6 frames",
        "distinct timestamp",
    )
    _nothing_at(out)


def test_image_and_video_too_small_for_the_detector_are_written_and_reported(
    tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    """A 10x10 image or clip holds no face MTCNN (min_face_size 12) can find: written as it
    was (exit 0), and the report says the frames were too small."""
    rng = np.random.default_rng(1)
    image = tmp_path / "tiny.png"
    write_image(image, rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    clip = tmp_path / "tiny.mp4"
    write_video(clip, [rng.integers(0, 256, (10, 10, 3), dtype=np.uint8) for _ in range(5)], 10)
    for src, out in ((image, tmp_path / "out.png"), (clip, tmp_path / "out.mp4")):
        argv = ["run", str(src), "-o", str(out), "--classifier", "yaleb-mlp", "--quiet"]
        caplog.clear()
        assert main(argv) == 0, capsys.readouterr().err
        assert "too small for the detector" in caplog.text
        t = json.loads(out.with_name(out.stem + ".report.json").read_text())["totals"]
        assert t["frames_too_small"] == t["frames"] == t["frames_without_faces"]
        assert t["faces"] == 0
    assert np.array_equal(read_image(tmp_path / "out.png"), read_image(image))
    assert t["frames"] == 5


def test_sigterm_cleans_up_as_sigint_does(tmp_path: Path) -> None:
    """`deid run` stopped by SIGTERM (docker stop, systemd, a batch scheduler) between two
    segments of a video: it exits 143 within seconds and leaves no work folder, no temporary
    file and no output (as Ctrl-C does)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .test_video_job import face_frames

    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "o.mp4")]) == 2
    assert signal.getsignal(signal.SIGTERM) is before  # main() puts the handler back

    src = tmp_path / "in.mp4"
    write_video(src, face_frames()[:6], 25)
    out = tmp_path / "out.mp4"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "DEID_PIPELINE__CHUNK_FRAMES": "1",  # a segment per frame: the first lands early
        "DEID_ATTACK__STEPS": "5",
    }
    argv = ["run", str(src), "-o", str(out), "--classifier", "yaleb-mlp", "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "deid.cli", *argv, "--quiet"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob(".out.mp4.parts-*/00000.mp4")):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no segment was written within 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        stopped = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "deid: terminated" in err and "Traceback" not in err, err
    assert stopped < 20, stopped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_video_progress_has_one_bar_per_pass(tmp_path: Path, clip: Path, capsys) -> None:
    """Analysis (fast) and rendering (the attack) each count the frames once, on bars of their
    own, so neither shows twice the frames nor the other's speed in its ETA."""
    out = tmp_path / "out.mp4"
    assert main(["run", str(clip), "-o", str(out), "--classifier", "yaleb-mlp"]) == 0
    err = capsys.readouterr().err
    bars = {}
    for line in err.replace("\r", "\n").splitlines():
        name, sep, rest = line.partition(": ")
        if sep and "frame" in rest and "|" in rest:
            bars.setdefault(name.strip(), []).append(rest.split("|")[2].split()[0])
    assert set(bars) == {"analyse clip.mp4", "render clip.mp4"}, err
    for counts in bars.values():
        assert counts[-1] == "6/6" and all(c.endswith("/6") for c in counts), bars


def test_version(capsys) -> None:
    from deid import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"deid {__version__}\n"


def test_output_equal_to_input(clip: Path, capsys) -> None:
    before = clip.read_bytes()
    _fails(capsys, ["run", str(clip), "-o", str(clip)], 2, "is the input", "different output")
    assert clip.read_bytes() == before


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--classifier", "resnet-9000"], ["unknown classifier", "yaleb-mlp"]),
        (["--attack", "deepdream"], ["--attack: unknown attack 'deepdream'", "ifgsm"]),
        (["--eps", "0"], ["eps", "greater than 0"]),
        (["--eps", "-0.1"], ["eps", "greater than 0"]),
        (["--eps", "1.5"], ["eps", "less than or equal to 1"]),
        (["--eps", "2"], ["--eps: Input should be less than or equal to 1 (got 2.0)"]),
        (["--steps", "0"], ["--steps: Input should be greater than or equal to 1 (got 0)"]),
        (["--fallback", "swirl"], ["--fallback: ", "pixelate"]),
        (["--target", "nobody"], ["target", "least-likely"]),
        (["--device", "tpu"], ["device"]),
    ],
)
def test_bad_options(
    tmp_path: Path, clip: Path, capsys, flags: list[str], words: list[str]
) -> None:
    out = tmp_path / "out.mp4"
    cls = [] if "--classifier" in flags else ["--classifier", "yaleb-mlp"]
    err = _fails(capsys, ["run", str(clip), "-o", str(out), "--quiet", *cls, *flags], 2, *words)
    assert "default.yaml" not in err  # a flag's value is not the file's
    _nothing_at(out)


def test_folder_with_one_corrupt_image(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    face = scene("astronaut_single_face.png")
    write_image(src / "a" / "astro.png", face)
    write_image(src / "small.jpg", face[::2, ::2])
    (src / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    out = tmp_path / "out"
    err = _fails(
        capsys,
        ["run", str(src), "-o", str(out), "--classifier", "yaleb-mlp", "--quiet"],
        3,
        "broken.jpg",
    )
    assert "1 input(s) failed" in err
    assert read_image(out / "a" / "astro.png").shape == face.shape
    assert (out / "small.jpg").is_file()
    assert not (out / "a" / "broken.jpg").exists()
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert [Path(f["file"]).name for f in report["failed_inputs"]] == ["broken.jpg"]
    assert report["totals"]["frames"] == 3 and report["totals"]["faces"] >= 2


def test_unwritable_output_suffix(tmp_path: Path, clip: Path, capsys) -> None:
    out = tmp_path / "out.txt"
    _fails(
        capsys,
        ["run", str(clip), "-o", str(out), "--classifier", "yaleb-mlp", "--quiet"],
        2,
        "expected one of",
        ".mp4",
    )
    _nothing_at(out)


def test_eval_classifier_prints_accuracy(capsys, data_dir) -> None:
    assert main(["eval", "classifier", "yaleb-mlp"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["top1"] >= 0.98 and out["n"] > 300


def test_data_prepare_errors(tmp_path: Path, capsys) -> None:
    _fails(
        capsys,
        ["data", "prepare", "yaleb", str(tmp_path / "missing"), "-o", str(tmp_path / "y.npz")],
        2,
        "CroppedYale",
    )
    shutil.rmtree(tmp_path, ignore_errors=True)


# The settings flags each command takes, and a value of each with the override it makes.
SETTINGS_FLAGS_OF = {
    "run": ["--classifier", "--attack", "--target", "--eps", "--steps", "--device", "--fallback"],
    "batch": ["--classifier", "--attack", "--device", "--workers"],
    "submit": ["--classifier", "--attack", "--target", "--eps", "--steps", "--fallback"],
}
FLAG_VALUES = {
    "--classifier": ("celeba-cnn", ("classifier", "name", "celeba-cnn")),
    "--attack": ("pgd", ("attack", "name", "pgd")),
    "--target": ("", ("attack", "target", "")),  # typed, even empty: a value (refused later)
    "--eps": ("8/255", ("attack", "eps", 8 / 255)),
    "--steps": ("0", ("attack", "steps", 0)),  # 0 is a value (refused later), not "unset"
    "--device": ("cpu", ("pipeline", "device", "cpu")),
    "--fallback": ("black", ("pipeline", "fallback", "black")),
    "--chunk-frames": ("7", ("pipeline", "chunk_frames", 7)),
    "--workers": ("2", ("pipeline", "workers", 2)),
}


@pytest.mark.parametrize("command", sorted(SETTINGS_FLAGS_OF))
def test_settings_flags_make_the_same_overrides_in_run_batch_and_submit(command: str) -> None:
    """One table turns `deid run`'s, `deid batch`'s and `deid submit`'s settings flags into
    the settings they name, so a flag means the same in each and none is dropped."""
    from deid.argtypes import SETTING_FLAGS, setting_overrides
    from deid.cli import build_parser

    parser = build_parser()
    base = [command, "in", "-o", "out"]
    assert setting_overrides(parser.parse_args(base)) == {}
    flags = SETTINGS_FLAGS_OF[command] + {
        "run": ["--no-verify", "--chunk-frames", "--workers"],
        "submit": ["--no-verify", "--chunk-frames"],
    }.get(command, [])
    argv, expected = list(base), {}
    for flag in flags:
        if flag == "--no-verify":
            argv.append(flag)
            expected.setdefault("pipeline", {})["verify"] = False
            continue
        text, (section, key, value) = FLAG_VALUES[flag]
        argv += [flag, text]
        expected.setdefault(section, {})[key] = value
        assert SETTING_FLAGS[f"{section}.{key}"] == flag  # messages name the flag
    assert setting_overrides(parser.parse_args(argv)) == expected
    for flag in set(FLAG_VALUES) - set(flags):  # the others are not this command's
        with pytest.raises(SystemExit):
            parser.parse_args([*base, flag, FLAG_VALUES[flag][0]])
