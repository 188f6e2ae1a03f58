"""Nothing deid writes may land on, in or around what it reads or another file it writes;
such a command is refused (exit code 2) before any model loads. Artefacts hold no clear face
unless asked for one.

Every refusal test checks the exit code, the message, and that every file of the tree is
byte-identical afterwards; a tripwire on model loading proves that no work ran.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deid.cli import main
from deid.io import read_image, write_image, write_video
from deid.report.contact import _thumb, contact_sheet

from .conftest import scene

FAST = ["--classifier", "yaleb-mlp", "--device", "cpu", "--quiet"]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripwire: loading the models means the command was not refused before the work."""
    from deid.pipeline import Resources

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("models loaded: the command was not refused before the work")

    monkeypatch.setattr(Resources, "load", tripwire)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) by relative path, with its bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def refused(capsys: pytest.CaptureFixture[str], root: Path, args: list[str], *words: str) -> str:
    """``deid ARGS`` exits 2 with ``words`` in its message and leaves ``root`` as it was."""
    before = snapshot(root)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("deid: error: "), err
    for w in words:
        assert w in err, (w, err)
    assert "Traceback" not in err
    assert snapshot(root) == before
    return err


def noise_image(path: Path, seed: int = 0, size: tuple[int, int] = (48, 64)) -> Path:
    rng = np.random.default_rng(seed)
    write_image(path, rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return path


def noise_clip(path: Path) -> Path:
    rng = np.random.default_rng(0)
    write_video(path, [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)], 10)
    return path


def find_tile(sheet: np.ndarray, tile: np.ndarray) -> tuple[int, int] | None:
    """Where ``tile`` appears exactly in a contact sheet as a *before* tile, if anywhere."""
    from deid.report.contact import CELL, PAD

    h, w = tile.shape[:2]
    for x in range(2 * PAD, sheet.shape[1] - w + 1, 2 * CELL + 3 * PAD):  # the columns
        for y in range(sheet.shape[0] - h + 1):
            if np.array_equal(sheet[y : y + h, x : x + w], tile):
                return x, y
    return None


def detail(rgb: np.ndarray) -> float:
    """Mean absolute difference of horizontal neighbours: high for a clear face, ~0 for blocks."""
    return float(np.abs(np.diff(rgb.astype(int), axis=1)).mean())


# --------------------------------------------------------------------------------------------
# 1. every artefact of a run: never the input, the output or another artefact
# --------------------------------------------------------------------------------------------
@pytest.fixture
def photo_run(tmp_path: Path) -> tuple[Path, Path]:
    """An input photo and the output of an earlier run (both must survive a refused run)."""
    src = noise_image(tmp_path / "in.png")
    out = noise_image(tmp_path / "out.png", seed=1)
    return src, out


def test_contact_sheet_onto_the_output_is_refused(
    tmp_path: Path, photo_run: tuple[Path, Path], capsys, no_models
) -> None:
    src, out = photo_run
    refused(
        capsys,
        tmp_path,
        ["run", str(src), "-o", str(out), "--contact-sheet", str(out), *FAST],
        f"{out}: the contact sheet is the output {out}",
    )


@pytest.mark.parametrize(
    ("sheet", "words"),
    [
        ("in.png", "the contact sheet is the input"),
        ("sub/../in.png", "the contact sheet is the input"),
        ("out.report.json", "the contact sheet is the report"),
        ("link.png", "the contact sheet is the input"),  # a symlink to the input
    ],
)
def test_contact_sheet_onto_the_input_or_report_is_refused(
    tmp_path: Path, photo_run: tuple[Path, Path], capsys, no_models, sheet: str, words: str
) -> None:
    src, out = photo_run
    (tmp_path / "out.report.json").write_text('{"earlier": "report"}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.png").symlink_to(src)
    args = ["run", str(src), "-o", str(out), "--contact-sheet", str(tmp_path / sheet), *FAST]
    refused(capsys, tmp_path, args, words)


@pytest.mark.parametrize(
    ("sheet", "words"),
    [
        ("photos/sheet.png", "the contact sheet is inside the input folder"),
        ("photos/a/sheet.png", "the contact sheet is inside the input folder"),
        ("photos_deid/sheet.png", "the contact sheet is inside the output folder"),
        ("photos_deid.report.json", "the contact sheet is the report"),
    ],
)
def test_folder_run_contact_sheet_in_the_trees_is_refused(
    tmp_path: Path, capsys, no_models, sheet: str, words: str
) -> None:
    (tmp_path / "photos" / "a").mkdir(parents=True)
    noise_image(tmp_path / "photos" / "a" / "x.png")
    args = ["run", str(tmp_path / "photos"), "-o", str(tmp_path / "photos_deid")]
    refused(capsys, tmp_path, [*args, "--contact-sheet", str(tmp_path / sheet), *FAST], words)
    assert not (tmp_path / "photos_deid").exists()


def test_contact_sheet_must_be_a_png(
    tmp_path: Path, photo_run: tuple[Path, Path], capsys, no_models
) -> None:
    src, out = photo_run
    sheet = tmp_path / "sheet.jpg"
    args = ["run", str(src), "-o", str(out), "--contact-sheet", str(sheet), *FAST]
    refused(capsys, tmp_path, args, str(sheet), "expected a .png")


# --------------------------------------------------------------------------------------------
# 2. output trees: never around (or inside) the input tree, in run, batch and the service
# --------------------------------------------------------------------------------------------
@pytest.fixture
def nested(tmp_path: Path) -> Path:
    """fold/a/n with two images; fold/link -> fold/a."""
    n = tmp_path / "fold" / "a" / "n"
    (n / "deeper").mkdir(parents=True)
    noise_image(n / "x.png")
    noise_image(n / "deeper" / "y.jpg", seed=2)
    (tmp_path / "fold" / "link").symlink_to(tmp_path / "fold" / "a")
    return n


@pytest.mark.parametrize("command", ["run", "batch"])
@pytest.mark.parametrize(
    ("output", "words"),
    [
        ("fold/a", "the output folder contains the input folder"),
        ("fold", "the output folder contains the input folder"),
        ("fold/link", "the output folder contains the input folder"),  # symlink to fold/a
        ("fold/a/n/deeper/../..", "the output folder contains the input folder"),
        ("fold/a/n", "the output folder is the input folder"),
        ("fold/a/n/out", "the output folder is inside the input folder"),
        ("fold/link/n/out", "the output folder is inside the input folder"),
    ],
)
def test_output_tree_around_or_inside_the_input_is_refused(
    tmp_path: Path, nested: Path, capsys, no_models, command: str, output: str, words: str
) -> None:
    refused(capsys, tmp_path, [command, str(nested), "-o", str(tmp_path / output), *FAST], words)


# --------------------------------------------------------------------------------------------
# 12. an output folder that cannot be written: exit 2, naming the output, before the work
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block as user ``nobody`` when the tests run as root (root writes into a 0o500
    folder regardless). Everything the command imports must be imported before this."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.mark.parametrize("name", ["out.mp4", "out.png"])
def test_read_only_output_folder(capsys, no_models, name: str) -> None:
    for module in ("deid.attacks", "deid.config", "deid.pipeline"):  # while still root: the
        importlib.import_module(module)  # Python installation may be unreadable to nobody

    with tempfile.TemporaryDirectory(prefix="deid-ro-") as d:
        root = Path(d)
        root.chmod(0o755)
        src = noise_clip(root / "in.mp4") if name.endswith(".mp4") else noise_image(root / "in.png")
        src.chmod(0o644)
        ro = root / "ro"
        ro.mkdir(mode=0o555)
        ro.chmod(0o555)
        out = ro / "sub" / name
        with unprivileged():
            code = main(["run", str(src), "-o", str(out), *FAST])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"deid: error: {out}: cannot write the output" in err and str(ro) in err
        assert ".tmp" not in err and ".parts" not in err and "Traceback" not in err
        assert list(ro.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's /sys")
@pytest.mark.parametrize("name", ["out.mp4", "out.png"])
def test_output_folder_nobody_can_write(tmp_path: Path, capsys, no_models, name: str) -> None:
    """sysfs refuses new files to root as well: the check must try, not trust permissions."""
    src = (
        noise_clip(tmp_path / "in.mp4")
        if name.endswith(".mp4")
        else noise_image(tmp_path / "in.png")
    )
    out = Path("/sys") / name
    code = main(["run", str(src), "-o", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"deid: error: {out}: cannot write the output" in err
    assert ".tmp" not in err and ".parts" not in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's /sys")
def test_writes_that_fail_late_name_the_output(tmp_path: Path, data_dir: Path) -> None:
    """Past the check (a folder that turns read-only mid-run, a full disk), a failed write
    still names the output, not its temporary file, and is no traceback."""
    from deid.config import load_settings
    from deid.errors import OutputError
    from deid.pipeline import Resources, Timer, new_state, process_image, run_video

    res = Resources.load(load_settings(None, {"classifier": {"name": "yaleb-mlp"}}))
    out = Path("/sys/deid-late.png")
    with pytest.raises(OutputError) as e:
        process_image(noise_image(tmp_path / "in.png"), out, res, new_state(res.settings), Timer())
    assert str(e.value).startswith(f"{out}: cannot write the output (") and ".tmp" not in str(
        e.value
    )
    out = Path("/sys/deid-late.mp4")
    with pytest.raises(OutputError) as e:
        run_video(noise_clip(tmp_path / "in.mp4"), out, res, progress=False)
    assert str(e.value).startswith(f"{out}: cannot write the output (") and ".parts" not in str(
        e.value
    )


def test_output_below_a_file_is_refused(tmp_path: Path, capsys, no_models) -> None:
    src = noise_image(tmp_path / "in.png")
    (tmp_path / "plain").write_text("a file, not a folder\n")
    out = tmp_path / "plain" / "sub" / "out.png"
    refused(capsys, tmp_path, ["run", str(src), "-o", str(out), *FAST], f"{out}:", "is a file")


# --------------------------------------------------------------------------------------------
# 14. deid report into an existing file, and its other clashes
# --------------------------------------------------------------------------------------------
def run_report(tmp_path: Path) -> Path:
    """A `deid run` report of one photo with one 'face', written by hand (no models): the
    input and output photos are noise, so every tile is full of detail."""
    src = noise_image(tmp_path / "in.png", size=(120, 160))
    out = tmp_path / "out.png"
    rgb = read_image(src)
    write_image(out, 255 - rgb)
    face = {
        "frame": 0,
        "region": [40, 20, 100, 100],
        "box": [45.0, 25.0, 95.0, 95.0],
        "track": 0,
        "pred": "alice",
        "pred_conf": 0.97,
        "target": "bob",
        "final": "bob",
        "final_conf": 0.91,
        "success": True,
        "action": "attacked",
        "psnr": 41.0,
        "linf": 0.03,
        "file": str(src),
    }
    rep = {
        "kind": "image",
        "input": str(src),
        "output": str(out),
        "totals": {"frames": 1, "faces": 1},
        "faces_detail": [face],
    }
    path = tmp_path / "out.report.json"
    path.write_text(json.dumps(rep))
    return path


def test_report_into_an_existing_file_is_refused(tmp_path: Path, capsys) -> None:
    rep = run_report(tmp_path)
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    refused(
        capsys,
        tmp_path,
        ["report", str(rep), "-o", str(existing)],
        str(existing),
        "is an existing file; expected a folder",
    )


@pytest.mark.parametrize("where", ["out.report.json", "in.png"])
def test_report_folder_onto_what_it_reads_is_refused(tmp_path: Path, capsys, where: str) -> None:
    rep = run_report(tmp_path)
    refused(capsys, tmp_path, ["report", str(rep), "-o", str(tmp_path / where)], "is the")


def test_report_folder_inside_the_runs_input_folder_is_refused(tmp_path: Path, capsys) -> None:
    rep = run_report(tmp_path)
    data = json.loads(rep.read_text())
    (tmp_path / "photos").mkdir()
    data.update(kind="folder", input=str(tmp_path / "photos"))
    rep.write_text(json.dumps(data))
    refused(
        capsys,
        tmp_path,
        ["report", str(rep), "-o", str(tmp_path / "photos" / "html")],
        "inside the input folder",
    )


# --------------------------------------------------------------------------------------------
# 3. no clear face in an artefact unless asked for
# --------------------------------------------------------------------------------------------
def _face_records(n: int = 2) -> list[dict[str, object]]:
    rng = np.random.default_rng(3)
    faces = []
    for i in range(n):
        before = rng.integers(0, 256, (70, 60, 3), dtype=np.uint8)
        faces.append(
            {
                "frame": i,
                "before": before,
                "after": 255 - before,
                "pred": "alice",
                "pred_conf": 0.9,
                "final": "bob",
                "final_conf": 0.8,
                "target": "bob",
                "action": "attacked",
                "psnr": 40.0,
            }
        )
    return faces


def _png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as img:
        return dict(img.text)  # type: ignore[attr-defined]


def test_contact_sheet_pixelates_the_originals_by_default(tmp_path: Path) -> None:
    from deid.align import pixelate
    from deid.report.contact import CELL

    faces = _face_records()
    sheet = np.asarray(Image.open(contact_sheet(faces, tmp_path / "s.png", title="t")))
    for f in faces:
        clear = np.asarray(_thumb(f["before"]))  # type: ignore[arg-type]
        assert find_tile(sheet, clear) is None
        at = find_tile(sheet, np.asarray(_thumb(pixelate(f["before"]))))  # type: ignore[arg-type]
        assert at is not None
        x, y = at
        assert detail(sheet[y : y + CELL, x : x + CELL]) < 0.25 * detail(clear)
    assert _png_text(tmp_path / "s.png")["deid:originals"] == "pixelated"


def test_contact_sheet_with_originals_says_so(tmp_path: Path, caplog) -> None:
    faces = _face_records()
    with caplog.at_level(logging.WARNING):
        path = contact_sheet(faces, tmp_path / "s.png", title="t", show_originals=True)
    sheet = np.asarray(Image.open(path))
    for f in faces:
        assert find_tile(sheet, np.asarray(_thumb(f["before"]))) is not None  # type: ignore[arg-type]
    assert _png_text(path)["deid:originals"] == "clear"
    assert "clear original faces" in caplog.text.lower() and str(path) in caplog.text


def test_show_originals_needs_a_contact_sheet(
    tmp_path: Path, photo_run: tuple[Path, Path], capsys, no_models
) -> None:
    src, out = photo_run
    args = ["run", str(src), "-o", str(out), "--show-originals", *FAST]
    refused(capsys, tmp_path, args, "--show-originals", "--contact-sheet")


def _astronaut(tmp_path: Path) -> Path:
    img = Image.fromarray(scene("astronaut_single_face.png"))
    img.thumbnail((200, 200), Image.Resampling.LANCZOS)
    src = tmp_path / "astro.png"
    img.save(src)
    return src


@pytest.mark.parametrize("originals", [False, True], ids=["default", "show-originals"])
def test_run_contact_sheet_holds_a_clear_face_only_when_asked(
    tmp_path: Path, data_dir: Path, capsys, caplog, originals: bool
) -> None:
    src = _astronaut(tmp_path)
    out, sheet = tmp_path / "out.png", tmp_path / "sheet.png"
    flags = ["--show-originals"] if originals else []
    with caplog.at_level(logging.WARNING):
        code = main(["run", str(src), "-o", str(out), "--contact-sheet", str(sheet), *FAST, *flags])
    assert code == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "out.report.json").read_text())
    assert rep["totals"]["faces"] == 1
    x1, y1, x2, y2 = rep["faces_detail"][0]["region"]
    clear = np.asarray(_thumb(read_image(src)[y1:y2, x1:x2]))
    grid = np.asarray(Image.open(sheet).convert("RGB"))
    found = find_tile(grid, clear)
    assert (found is not None) == originals
    assert _png_text(sheet)["deid:originals"] == ("clear" if originals else "pixelated")
    assert ("clear original faces" in caplog.text.lower()) == originals


@pytest.mark.parametrize("originals", [False, True], ids=["default", "show-originals"])
def test_report_html_holds_a_clear_face_only_when_asked(
    tmp_path: Path, capsys, caplog, originals: bool
) -> None:
    rep = run_report(tmp_path)
    html = tmp_path / "html"
    flags = ["--show-originals"] if originals else []
    with caplog.at_level(logging.WARNING):
        assert main(["report", str(rep), "-o", str(html), *flags]) == 0
    x1, y1, x2, y2 = json.loads(rep.read_text())["faces_detail"][0]["region"]
    clear = np.asarray(_thumb(read_image(tmp_path / "in.png")[y1:y2, x1:x2]))
    name = "contact.originals.png" if originals else "contact.png"
    assert sorted(p.name for p in html.glob("contact*.png")) == [name]
    grid = np.asarray(Image.open(html / name).convert("RGB"))
    assert (find_tile(grid, clear) is not None) == originals
    page = (html / "index.html").read_text()
    assert f"src='{name}'" in page
    assert ("clear original faces" in page.lower()) == originals
    assert ("clear original faces" in caplog.text.lower()) == originals
    if originals:  # rendering again without the flag removes the clear sheet
        assert main(["report", str(rep), "-o", str(html)]) == 0
        assert sorted(p.name for p in html.glob("contact*.png")) == ["contact.png"]


# --------------------------------------------------------------------------------------------
# the other writers: train, data prepare, eval, the demo clip
# --------------------------------------------------------------------------------------------
@pytest.fixture
def npz(tmp_path: Path) -> Path:
    """A dataset file deid reads (its content does not matter: the command must not start)."""
    path = tmp_path / "faces.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2, np.int64))
    return path


def test_train_onto_its_dataset_is_refused(tmp_path: Path, npz: Path, capsys) -> None:
    args = ["train", "yaleb-mlp", "--data", str(npz), "--epochs", "1"]
    refused(capsys, tmp_path, [*args, "-o", str(npz)], f"{npz}: the checkpoint is the dataset")
    # a checkpoint named .json: its metadata (the same name, .json) would overwrite it
    meta = tmp_path / "model.json"
    refused(capsys, tmp_path, [*args, "-o", str(meta)], "the checkpoint metadata is the checkpoint")


def test_train_advgan_refuses_what_does_not_apply(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "g.pt")
    args = ["train", "advgan", "--classifier", "yaleb-mlp", "-o", out]
    refused(capsys, tmp_path, [*args, "--width", "8"], "--width", "only apply to facegan")
    refused(capsys, tmp_path, [*args, "--eot-copies", "-1"], "--eot-copies must be >= 0")
    missing = tmp_path / "none.pt"
    refused(capsys, tmp_path, [*args, "--init", str(missing)], "none.pt")
    init = tmp_path / "g.pt"  # fine-tuned onto itself: the generator would be lost
    init.write_bytes(b"a generator")
    refused(capsys, tmp_path, [*args, "--init", str(init)], "generator to fine-tune")


def test_train_onto_the_default_dataset_is_refused(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deid.data.datasets import YALEB_FILES
    from deid.models.train import RECIPES

    monkeypatch.setenv("DEID_DATA_DIR", str(tmp_path))
    default = tmp_path / YALEB_FILES[RECIPES["yaleb-mlp"].resolution]
    default.parent.mkdir(parents=True)
    default.write_bytes(b"the shared dataset")
    args = ["train", "yaleb-mlp", "--epochs", "1", "-o", str(default)]
    refused(capsys, tmp_path, args, "the checkpoint is the dataset")


@pytest.mark.parametrize(
    ("output", "words"),
    [
        ("src/y.npz", "the dataset file is inside the source folder"),
        ("src/CroppedYale/yaleB01/yaleB01_P00A+000E+00.pgm", "inside the source folder"),
        ("src", "is the source folder"),
    ],
)
def test_data_prepare_into_its_source_is_refused(
    tmp_path: Path, capsys, output: str, words: str
) -> None:
    pgm = tmp_path / "src" / "CroppedYale" / "yaleB01" / "yaleB01_P00A+000E+00.pgm"
    pgm.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pgm, format="PPM")
    args = ["data", "prepare", "yaleb", str(tmp_path / "src"), "-o", str(tmp_path / output)]
    refused(capsys, tmp_path, args, words)


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "attack", "--classifier", "yaleb-mlp", "-n", "2", "--eps", "8/255"],
        ["eval", "survival", "--classifier", "yaleb-mlp", "-n", "1", "--crf", "28"],
        ["eval", "dataset", "--classifier", "yaleb-mlp", "-n", "1", "--eps", "8/255"],
    ],
    ids=["attack", "survival", "dataset"],
)
def test_eval_json_onto_its_dataset_is_refused(
    tmp_path: Path, npz: Path, capsys, command: list[str]
) -> None:
    args = [*command, "--data", str(npz), "--json", str(npz)]
    refused(capsys, tmp_path, args, f"{npz}: the JSON report is the dataset")


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "robustness", "yaleb-mlp", "--attacks", "fgsm", "--eps", "8/255", "-n", "2"],
        ["eval", "transfer", "--sources", "yaleb-mlp", "--steps", "1", "-n", "2"],
    ],
    ids=["robustness", "transfer"],
)
def test_eval_report_folder_clashes_are_refused(
    tmp_path: Path, npz: Path, capsys, command: list[str]
) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    args = [*command, "--data", str(npz), "--device", "cpu"]
    refused(capsys, tmp_path, [*args, "-o", str(existing)], "is an existing file")
    refused(capsys, tmp_path, [*args, "-o", str(tmp_path)], "contains the dataset")


def test_demo_into_an_unwritable_folder(capsys) -> None:
    from deid.demo import main as demo

    assert demo(["/sys/deid-demo.mp4"]) == 2
    err = capsys.readouterr().err
    assert "deid: error: /sys/deid-demo.mp4: cannot write the demo clip" in err
