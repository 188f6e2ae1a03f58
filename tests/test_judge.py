"""The independent judge (dlib's face recognizer): its contract on real faces, the rule that
only evaluation and reporting code may import it, what happens without the extra, and
``deid eval privacy``."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from deid import judge
from deid.cli import main
from deid.judge import DESCRIPTOR_DIM, THRESHOLD, JudgeMissingError

REPO = Path(__file__).resolve().parents[1]

needs_judge = pytest.mark.skipif(
    not judge.available(),
    reason=f"the judge's extra is not installed ({judge.INSTALL_HINT})",
)


# --------------------------------------------------------------------------------------------
# the import rule: the judge is an evaluator; nothing that makes or trains a perturbation
# may see it
# --------------------------------------------------------------------------------------------
JUDGE = "deid.judge"
# packages that make perturbations, losses or models: they may not reach the judge at all,
# not even through a lazy import in a function
NEVER = ("deid.attacks", "deid.models", "deid.generators", "deid.targets")


def may_import_judge(module: str) -> bool:
    """Evaluation and reporting code: the judge itself, ``deid.eval.*``, ``deid.report.*``
    and a report or verification module (e.g. the pipeline's, which puts the judge's figures
    in run reports)."""
    last = module.rpartition(".")[2]
    return (
        module == JUDGE
        or module.startswith((f"{JUDGE}.", "deid.eval.", "deid.report."))
        or "report" in last
        or "verif" in last
    )


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the ``deid`` package under ``root``, by dotted name."""
    mods = {}
    for p in (root / "deid").rglob("*.py"):
        rel = p.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = p
    return mods


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the deid modules it imports anywhere (top level or inside a function), read
    with ``ast``; ``from deid import judge`` counts as importing ``deid.judge``."""
    mods = module_files(root)

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                names.add(base)
                names |= {f"{base}.{a.name}" for a in node.names}
        graph[mod] = {k for k in map(known, names) if k and k != mod}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` reaches through imports -> the module that imported it."""
    via: dict[str, str] = {}
    todo = [start]
    while todo:
        m = todo.pop()
        for n in graph.get(m, ()):
            if n not in via and n != start:
                via[n] = m
                todo.append(n)
    return via


def judge_rule_violations(root: Path) -> list[str]:
    """What breaks the rule in the tree at ``root``: direct importers of the judge outside
    evaluation and reporting, and chains from a NEVER package to the judge."""
    graph = import_graph(root)
    bad = [
        f"{m} imports {JUDGE}"
        for m, deps in sorted(graph.items())
        if any(d == JUDGE or d.startswith(f"{JUDGE}.") for d in deps) and not may_import_judge(m)
    ]
    for m in sorted(graph):
        if not m.startswith(NEVER):
            continue
        via = reachable(graph, m)
        hit = next((n for n in via if n == JUDGE or n.startswith(f"{JUDGE}.")), None)
        if hit:
            chain = [hit]
            while chain[-1] != m:
                chain.append(via[chain[-1]])
            bad.append(" <- ".join(chain))
    return bad


def test_only_evaluation_and_reporting_code_imports_the_judge() -> None:
    graph = import_graph(REPO)
    assert JUDGE in graph, "the walk did not find deid/judge"
    importers = {m for m, deps in graph.items() if JUDGE in deps}
    assert "deid.eval.privacy" in importers  # the walk sees lazy imports in functions
    assert judge_rule_violations(REPO) == []


@pytest.mark.parametrize(
    ("where", "code", "expected"),
    [
        # a direct import by an attack, in a function, in the `from deid import judge` form
        ("deid/attacks/sneaky.py", "def f():\n    from deid import judge\n", "deid.attacks.sneaky"),
        # a transitive one: a model's training code imports an evaluation module
        ("deid/models/helper.py", "import deid.eval.privacy\n", "deid.models.helper"),
        # a protection stage that is neither evaluation nor reporting
        ("deid/protect.py", "from deid.judge import load_judge\n", "deid.protect imports"),
    ],
)
def test_the_import_rule_catches_a_breach(
    tmp_path: Path, where: str, code: str, expected: str
) -> None:
    for p in (REPO / "deid").rglob("*.py"):
        dst = tmp_path / p.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(p.read_text())
    assert judge_rule_violations(tmp_path) == []
    (tmp_path / where).write_text(code)
    bad = judge_rule_violations(tmp_path)
    assert any(expected in b for b in bad), bad


# --------------------------------------------------------------------------------------------
# without the extra
# --------------------------------------------------------------------------------------------
def test_without_the_extra_the_judge_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object) -> object:
        if name in ("dlib", "face_recognition_models"):
            return None
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert not judge.available()
    assert judge.model_dir() is None
    with pytest.raises(JudgeMissingError, match=r"pip install 'deid\[judge\]'") as e:
        judge.Judge()
    assert "dlib" in str(e.value) and "face_recognition_models" in str(e.value)


def test_without_the_extra_eval_privacy_fails_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(judge, "available", lambda: False)
    monkeypatch.setattr(judge, "_missing", lambda: ["dlib (dlib-bin)"])
    assert main(["eval", "privacy", "-n", "2"]) == 2
    assert "pip install 'deid[judge]'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# the contract, on real faces
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def celeba_test(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from deid.data import load_celeba

    ds = load_celeba()
    return ds.images[ds.test], ds.labels[ds.test]


@needs_judge
def test_descriptor_shape_and_the_same_image(celeba_test: tuple[np.ndarray, np.ndarray]) -> None:
    j = judge.load_judge()
    x, _ = celeba_test
    d = j.descriptor(x[0])
    assert d.shape == (DESCRIPTOR_DIM,) and d.dtype == np.float32
    assert np.isfinite(d).all()
    assert j.distance(d, j.descriptor(x[0].copy())) < 1e-5
    assert j.linked(d, d)
    # grey input and (H, W) input agree; a batch agrees with single calls
    grey = x[0].mean(2).astype(np.uint8)
    assert j.distance(j.descriptor(grey), j.descriptor(np.repeat(grey[..., None], 3, 2))) < 1e-5
    batch = j.descriptors(x[:3])
    assert batch.shape == (3, DESCRIPTOR_DIM)
    assert np.allclose(batch[0], d)
    with pytest.raises(ValueError, match="uint8"):
        j.descriptor(x[0].astype(np.float32))


@needs_judge
def test_worker_processes_give_the_same_descriptors(
    celeba_test: tuple[np.ndarray, np.ndarray],
) -> None:
    """dlib describes on one core and holds the GIL: several faces are shared by worker
    processes (``pipeline.judge_workers``), with the descriptors of describing them here."""
    j = judge.load_judge()
    x, _ = celeba_test
    faces = [*x[:20], x[20].mean(2).astype(np.uint8)]  # a grey one among them
    here = j.descriptors(faces)
    shared = j.descriptors(faces, workers=2)
    assert shared.shape == (21, DESCRIPTOR_DIM) and shared.dtype == np.float32
    np.testing.assert_array_equal(shared, here)
    assert len(judge._WORKERS) == 2 and all(w.poll() is None for w in judge._WORKERS)
    # too few faces for a worker each: described here
    np.testing.assert_array_equal(j.descriptors(faces[:9], workers=2), here[:9])
    with pytest.raises(ValueError, match="uint8"):  # checked before anything is sent
        j.descriptors([*faces[:16], x[0].astype(np.float32)], workers=2)
    judge._close_workers()
    assert judge._WORKERS == []


@needs_judge
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_workers(
    celeba_test: tuple[np.ndarray, np.ndarray],
) -> None:
    """Celery's prefork pool forks a process that may already hold workers: the child must
    not talk on its parent's pipes (the replies would interleave), and the parent's workers
    must keep working."""
    j = judge.load_judge()
    x, _ = celeba_test
    faces = list(x[:16])
    here = j.descriptors(faces)
    np.testing.assert_array_equal(j.descriptors(faces, workers=2), here)
    parents = [w.pid for w in judge._WORKERS]
    pid = os.fork()
    if pid == 0:  # the child: its own workers, the same descriptors
        ok = np.array_equal(j.descriptors(faces, workers=2), here)
        ok &= all(w.pid not in parents for w in judge._WORKERS)
        judge._close_workers()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    np.testing.assert_array_equal(j.descriptors(faces, workers=2), here)
    assert [w.pid for w in judge._WORKERS] == parents
    judge._close_workers()


@needs_judge
def test_different_people_are_apart_and_the_same_person_is_near(
    celeba_test: tuple[np.ndarray, np.ndarray],
) -> None:
    j = judge.load_judge()
    x, y = celeba_test
    ids = np.unique(y)[:12]
    first = np.array([np.flatnonzero(y == k)[0] for k in ids])
    second = np.array([np.flatnonzero(y == k)[1] for k in ids])
    a, b = j.descriptors(x[first]), j.descriptors(x[second])
    dist = np.linalg.norm(a[:, None] - a[None], axis=2)
    different = dist[np.triu_indices(len(ids), 1)]
    # measured on the held-out split at 64 px: 99% of different-person pairs >= 0.6
    assert (different >= THRESHOLD).mean() >= 0.9, np.round(different, 2)
    same = np.asarray(j.distance(a, b))
    # measured: 95% of same-person pairs < 0.6
    assert (same < THRESHOLD).mean() >= 0.7, np.round(same, 2)
    assert np.median(same) < np.median(different)


# --------------------------------------------------------------------------------------------
# deid eval privacy
# --------------------------------------------------------------------------------------------
def test_eval_privacy_refuses_to_write_over_its_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "faces.npz"
    np.savez(data, images=np.zeros((2, 8, 8, 3), np.uint8), labels=[0, 1], subject_ids=["a", "b"])
    before = data.read_bytes()
    assert main(["eval", "privacy", "--data", str(data), "--json", str(data)]) == 2
    assert "dataset" in capsys.readouterr().err
    assert data.read_bytes() == before


@needs_judge
@pytest.mark.slow
def test_eval_privacy_judges_modes_on_held_out_faces(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "privacy.json"
    modes = "ifgsm,pixelate,replace"
    argv = ["eval", "privacy", "-n", "3", "--modes", modes, "--gallery-per-id", "1"]
    assert main([*argv, "--no-detect", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| ifgsm |" in text and "| pixelate |" in text and "n=3" in text
    rep = json.loads(out.read_text())
    assert rep["kind"] == "eval-privacy" and rep["n"] == 3
    assert rep["gallery"]["faces"] == 185  # one train face of every CelebA identity
    rows = {r["mode"]: r for r in rep["rows"]}
    # the adversarial mode reaches its target on deid's own classifier, 8-bit written
    assert rows["ifgsm"]["own_success"] >= 2 / 3
    assert rows["ifgsm"]["psnr"] > 25
    # pixelating with deid's fallback leaves the judge nothing to link (measured: 100%)
    assert rows["pixelate"]["judge_unlinkable"] >= 2 / 3
    assert rows["pixelate"]["own_success"] is None
    # a generated face of no one, then targeted: the judge no longer links it, and deid's
    # classifier sees the target in it
    assert rows["replace"]["judge_unlinkable"] >= 2 / 3
    assert rows["replace"]["own_success"] >= 2 / 3
    for r in rows.values():
        d = np.array(r["per_face"]["distance"])
        assert len(d) == 3 and (d >= 0).all()
        assert r["judge_unlinkable"] == pytest.approx((d >= THRESHOLD).mean(), abs=1e-3)


@needs_judge
@pytest.mark.slow
def test_calibration_on_a_few_faces_and_one_photo(data_dir: Path, tmp_path: Path) -> None:
    from deid.eval.privacy import calibration_table, format_calibration

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "group.jpg").symlink_to(data_dir / "scenes" / "group_friends_stoop.jpg")
    table = calibration_table(n=16, sizes=(None, 24), scenes=photos)
    rows = {(r["set"], r["size"]): r for r in table["rows"]}
    native = rows[("celeba held-out", "native")]
    assert native["faces"] == 16 and native["diff_pairs"] > 0
    assert native["self_median"] is None  # native is the reference
    small = rows[("celeba held-out", 24)]
    assert 0 < small["self_median"] < THRESHOLD  # downscaling moves a face, not past 0.6
    photo = rows[("shared photos", "native")]
    assert photo["faces"] >= 5 and photo["diff_pairs"] == photo["faces"] * (photo["faces"] - 1) // 2
    assert photo["diff_apart"] >= 0.9  # six different people
    assert "shared photos" in format_calibration(table)


@needs_judge
@pytest.mark.slow
def test_eval_privacy_judges_a_finished_run(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # six large frontal faces, the default mode: deid's classifier is fooled, the judge is
    # not (the finding: distances 0.26-0.41, all linked)
    out = tmp_path / "stoop.jpg"
    assert main(["run", str(data_dir / "scenes" / "group_friends_stoop.jpg"), "-o", str(out)]) == 0
    capsys.readouterr()
    judged = tmp_path / "judged.json"
    report = tmp_path / "stoop.report.json"
    assert main(["eval", "privacy", "--run", str(report), "--json", str(judged)]) == 0
    assert "faces 6" in capsys.readouterr().out
    rep = json.loads(judged.read_text())
    faces = rep["faces"]
    assert len(faces) == len(json.loads(report.read_text())["faces_detail"]) == 6
    assert all(f["action"] == "attacked" for f in faces)
    assert all(0 < f["distance"] < THRESHOLD and f["linked"] for f in faces)
    assert rep["totals"]["unlinkable"] == 0 and rep["totals"]["natural"] == 6
    assert len(rep["tracks"]) == 6
    # the judged report may not be written over what it reads
    assert main(["eval", "privacy", "--run", str(report), "--json", str(report)]) == 2
