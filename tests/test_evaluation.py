"""deid eval dataset and deid report on the real held-out splits, classifiers and MTCNN."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deid.cli import main
from deid.errors import ConfigError, InputError
from deid.eval.heldout import dataset_eval, format_dataset_eval
from deid.report.html import coverage_series, render, track_rows

EPS = [8 / 255, 16 / 255]


@pytest.fixture(scope="module")
def celeba(data_dir: Path) -> dict[str, Any]:
    return dataset_eval("celeba-cnn", "ifgsm", EPS, n=8, device="cpu", examples=4)


@pytest.fixture(scope="module")
def yaleb(data_dir: Path) -> dict[str, Any]:
    return dataset_eval("yaleb-mlp", "ifgsm", [16 / 255], n=8, device="cpu", examples=3)


def _png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def check_report(rep: dict[str, Any], n: int, eps: list[float], shape: tuple[int, ...]) -> None:
    assert rep["kind"] == "eval-dataset" and rep["n"] == n
    json.dumps(rep, allow_nan=False)  # strict JSON: no NaN or Infinity
    labels = np.array(rep["per_sample"]["label"])
    targets = np.array(rep["per_sample"]["target"])
    assert len(labels) == len(targets) == n
    assert (targets != np.array(rep["per_sample"]["pred"])).all()  # never the predicted id
    assert 0.0 <= rep["clean"]["top1"] <= 1.0
    assert 0.0 < rep["clean"]["detected"] <= 1.0
    assert sum(c for _, _, c in rep["clean"]["confusion"]) == n
    assert [r["eps"] for r in rep["rows"]] == eps
    for r in rep["rows"]:
        ps = r["per_sample"]
        pred = np.array(ps["pred"])
        assert 0.0 <= r["success"] <= 1.0 and 0.0 <= r["original_recognised"] <= 1.0
        assert r["success"] == pytest.approx(float((pred == targets).mean()), abs=1e-4)
        assert r["original_recognised"] == pytest.approx(float((pred == labels).mean()), abs=1e-4)
        assert ps["success"] == (pred == targets).tolist()
        # the perturbation respects the budget and is measured after 8-bit rounding
        assert 0 < r["norms"]["linf"]["max"] <= r["eps"] + 1e-5  # (rounded to 5 decimals)
        assert all(v is not None and v <= r["eps"] + 1e-5 for v in ps["linf"])
        assert r["norms"]["l0"]["mean"] > 0 and 0 < r["l0_fraction"]["mean"] <= 1.0
        assert r["norms"]["l2"]["mean"] <= r["norms"]["l1"]["mean"]
        assert math.isfinite(r["psnr"]["mean"]) and r["psnr"]["min"] > 20.0
        # 20*log10(1/Linf) bounds the PSNR from below
        assert r["psnr"]["min"] >= 20 * math.log10(1 / r["eps"]) - 1e-3
        assert 0.0 < r["ssim"]["min"] <= r["ssim"]["max"] <= 1.0
        assert 0.0 <= r["detected"] <= 1.0 and 0.0 <= r["detection_kept"] <= 1.0
        assert len(ps["detected"]) == n
        assert sum(c for _, _, c in r["confusion_after"]) == n
        assert len(r["examples"]) == len(rep["examples"]["samples"])
        assert _png(r["examples"][0]).shape == shape
    assert _png(rep["examples"]["clean"][0]).shape == shape


def test_eval_dataset_celeba(celeba: dict[str, Any]) -> None:
    check_report(celeba, 8, EPS, (64, 64, 3))
    assert len(celeba["class_names"]) == 185
    # the CNN is fooled at 16/255 (README: 100% of 200 faces) and stops seeing the person
    last = celeba["rows"][-1]
    assert last["success"] >= 0.85 and last["original_recognised"] <= 0.15
    table = format_dataset_eval(celeba)
    assert "| 16/255 |" in table and "MTCNN" in table


def test_eval_dataset_yaleb(yaleb: dict[str, Any]) -> None:
    check_report(yaleb, 8, [16 / 255], (48, 42, 3))
    assert len(yaleb["class_names"]) == 38
    assert yaleb["rows"][0]["success"] >= 0.85


def test_eval_dataset_unbounded_attack_and_errors(data_dir: Path, tmp_path: Path) -> None:
    rep = dataset_eval("yaleb-mlp", "conceal", None, n=4, device="cpu", detect=False, examples=4)
    (row,) = rep["rows"]
    assert row["eps"] is None and "detected" not in row and rep["clean"]["detected"] is None
    assert row["norms"]["linf"]["mean"] > 16 / 255  # concealment is not bounded
    path = tmp_path / "conceal.json"
    path.write_text(json.dumps(rep, allow_nan=False))
    assert "src='success_vs_eps.png'" in render(path, tmp_path / "html").read_text()
    _pngs_ok(tmp_path / "html", ["contact.png", "success_vs_eps.png"], 3000)
    with pytest.raises(ConfigError, match="has no eps"):
        dataset_eval("yaleb-mlp", "conceal", [8 / 255], n=2, device="cpu")
    with pytest.raises(ConfigError, match="unknown attack"):
        dataset_eval("yaleb-mlp", "nope", None, n=2, device="cpu")


def _pngs_ok(out: Path, names: list[str], min_bytes: int = 8000) -> None:
    for name in names:
        p = out / name
        assert p.is_file() and p.stat().st_size > min_bytes, name
        with Image.open(p) as img:
            assert img.width >= 400 and img.height >= 200, name
            # not a blank canvas: a real figure has many colours
            assert len(img.convert("RGB").getcolors(1 << 20) or []) > 50, name


def test_report_html_from_eval(celeba: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(celeba))
    index = render(path, tmp_path / "html")
    names = ["contact.png", "success_vs_eps.png", "norms.png", "confusion.png"]
    _pngs_ok(tmp_path / "html", names)
    text = index.read_text()
    assert text.startswith("<!doctype html>")
    for name in names:
        assert f"src='{name}'" in text
    assert "16/255" in text and "targeted success" in text


def test_eval_and_report_cli(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "r" / "yale.json"
    args = ["eval", "dataset", "--classifier", "yaleb-mlp", "-n", "4", "--eps", "4/255,16/255"]
    assert main([*args, "--json", str(out), "--device", "cpu", "--quiet"]) == 0
    rep = json.loads(out.read_text())
    assert [r["eps_255"] for r in rep["rows"]] == [4, 16]
    assert main(["report", str(out), "-o", str(tmp_path / "html")]) == 0
    _pngs_ok(tmp_path / "html", ["contact.png", "success_vs_eps.png", "norms.png"], 4000)
    # attack settings from a YAML config (here: 3 steps, a logit margin)
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("classifier: {name: yaleb-mlp}\nattack: {name: ifgsm, steps: 3, margin: 0.5}\n")
    out2 = tmp_path / "r" / "cfg.json"
    args2 = ["eval", "dataset", "--config", str(cfg), "-n", "2", "--eps", "16/255", "--no-detect"]
    assert main([*args2, "--json", str(out2), "--device", "cpu", "--quiet"]) == 0
    rep2 = json.loads(out2.read_text())
    assert rep2["classifier"] == "yaleb-mlp"
    assert rep2["rows"][0]["config"]["steps"] == 3 and rep2["rows"][0]["config"]["margin"] == 0.5
    assert rep2["rows"][0]["mean_steps"] <= 3
    assert main(["eval", "dataset", "--attack", "conceal", "--eps", "8/255", "-n", "2"]) == 2
    assert main(["eval", "dataset", "--eps", "eight", "-n", "2"]) == 2
    assert main(["report", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x")]) == 2
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert main(["report", str(tmp_path / "other.json"), "-o", str(tmp_path / "x")]) == 2


def test_report_html_from_run(tmp_path: Path, data_dir: Path) -> None:
    from deid.config import load_settings
    from deid.pipeline import report_path, run
    from tests.conftest import scene

    src = tmp_path / "group.jpg"
    img = Image.fromarray(scene("group_selfie_elevator.jpg"))
    img.thumbnail((360, 360))
    img.save(src, quality=92)
    out = tmp_path / "out" / "group.jpg"
    settings = load_settings(
        None, {"classifier": {"name": "yaleb-mlp"}, "pipeline": {"device": "cpu"}}
    )
    run(src, out, settings, progress=False)
    index = render(report_path(out), tmp_path / "html")
    _pngs_ok(tmp_path / "html", ["contact.png", "coverage.png"], 3000)
    text = index.read_text()
    assert "src='contact.png'" in text and "Tracks" in text
    # the contact sheet is rebuilt from the files; gone files only lose the sheet
    out.unlink()
    text = render(report_path(out), tmp_path / "html2").read_text()
    assert "no contact sheet" in text and "src='coverage.png'" in text


def test_run_report_tracking_fields_rendered_when_present(tmp_path: Path) -> None:
    faces = [
        {"frame": f, "track": t, "action": a, "pred": "p", "target": tg, "region": None}
        for f, t, a, tg in [
            (0, 0, "attacked", "x"),
            (1, 0, "attacked", "y"),
            (1, 1, "obscured:pixelate", "z"),
        ]
    ]
    rep: dict[str, Any] = {
        "kind": "video",
        "input": "gone.mp4",
        "output": "gone-out.mp4",
        "totals": {"frames": 3, "faces": 3},
        "faces_detail": faces,
    }
    # without tracking fields: derived from faces_detail (track 0 changed its target)
    rows = track_rows(rep)
    assert [(r["id"], r["faces"], r["target_changes"]) for r in rows] == [(0, 2, 1), (1, 1, 0)]
    frames, series, stacked = coverage_series(rep)
    assert frames == [0, 1, 2] and series["de-identified"] == [1, 1, 0]
    assert series["obscured"] == [0, 1, 0] and stacked == ["de-identified", "obscured"]
    # with them: the pipeline's own per-track summaries and per-frame coverage
    rep["tracks"] = [{"id": 7, "first": 0, "last": 2, "detected": 2, "interpolated": 1}]
    rep["coverage"] = [{"frame": i, "protected": 1, "faces": 2} for i in range(3)]  # rows
    assert track_rows(rep) == rep["tracks"]
    assert coverage_series(rep)[1]["protected"] == [1.0, 1.0, 1.0]
    rep["coverage"] = {"faces": [1, 2, 0], "protected": [1, 1, 0]}  # columns
    series = coverage_series(rep)[1]
    assert series["faces"] == [1.0, 2.0, 0.0] and series["unprotected"] == [0.0, 1.0, 0.0]
    path = tmp_path / "run.report.json"
    path.write_text(json.dumps(rep))
    text = render(path, tmp_path / "html").read_text()
    assert "interpolated" in text and "src='coverage.png'" in text
    assert (tmp_path / "html" / "coverage.png").is_file()
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(InputError, match="expected a JSON object"):
        render(tmp_path / "x.json", tmp_path / "h")
    (tmp_path / "x.json").write_text('{"totals": {}}')
    with pytest.raises(InputError, match="neither"):
        render(tmp_path / "x.json", tmp_path / "h")
