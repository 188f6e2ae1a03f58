"""What the package layout promises: the ``deid eval`` parsers load no report (nor torch), the
library builds its Celery app without the workers' shell, one parser reads every fraction and
one conversion writes every 8-bit image."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from deid.argtypes import fraction_list, parse_fraction
from deid.attacks import IFGSMConfig
from deid.attacks.base import from_uint8, quantize8, to_uint8
from deid.cli import main
from deid.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter after running ``code``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=True,
    ).stdout
    return set(out.split())


def test_eval_parsers_load_no_report_and_no_torch() -> None:
    loaded = _modules_after(
        "import argparse\n"
        "from deid.eval.cli import add_parser\n"
        "add_parser(argparse.ArgumentParser().add_subparsers())"
    )
    assert "torch" not in loaded
    assert not {m for m in loaded if m.startswith("deid.eval.") and m != "deid.eval.cli"}


def test_client_builds_its_celery_app_without_the_workers_package() -> None:
    loaded = _modules_after(
        "from deid.config import Settings\n"
        "from deid.service.client import Client\n"
        "app = Client(Settings()).app\n"
        "assert app.conf.task_default_queue == 'deid'"
    )
    assert "celery" in loaded
    assert not {m for m in loaded if m == "workers" or m.startswith("workers.")}


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["eval", "attack", "--eps", "8/255,nope"], "--eps"),
        (["eval", "dataset", "--eps", "4/0"], "--eps"),
        (["eval", "robustness", "yaleb-mlp", "--eps", "x/255", "-o", "{out}"], "--eps"),
        (
            ["eval", "transfer", "--sources", "yaleb-mlp", "--alpha", "2//255", "-o", "{out}"],
            "--alpha",
        ),
    ],
)
def test_eval_budgets_that_do_not_parse_name_their_flag(
    argv: list[str], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{out}", str(tmp_path / "out")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "expected a number such as 0.063 or 16/255" in err, err
    assert f"deid: error: {flag}: " in err, err
    assert not (tmp_path / "out").exists()


def test_one_fraction_parser_for_flags_and_config() -> None:
    assert parse_fraction("16/255") == 16 / 255 and parse_fraction(" 0.25 ") == 0.25
    for bad in ("", "a/b", "1/0", "1/2/3"):
        with pytest.raises(ValueError, match=r"expected a number such as 0\.063 or 16/255"):
            parse_fraction(bad)
    assert fraction_list(" 4/255, 8/255 ,,", "--eps") == [4 / 255, 8 / 255]
    with pytest.raises(ConfigError, match=r"^--eps: expected a number"):
        fraction_list("4/255,x", "--eps")
    assert IFGSMConfig(eps="16/255").eps == 16 / 255  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        IFGSMConfig(eps="16/0")  # type: ignore[arg-type]


def test_to_uint8_rounds_clips_and_inverts() -> None:
    x = torch.tensor([-0.2, 0.0, 0.5 / 255, 1.49 / 255, 0.5, 1.0, 1.3]).view(1, 1, 1, 7)
    x = x.expand(2, 3, 1, 7)
    a = to_uint8(x)
    assert a.dtype == np.uint8 and a.shape == (2, 1, 7, 3)
    assert a[0, 0, :, 0].tolist() == [0, 0, 0, 1, 128, 255, 255]
    assert torch.equal(from_uint8(a), quantize8(x.clamp(0, 1)))
    assert np.array_equal(to_uint8(from_uint8(a)), a)


# The command line, batch, report, service and worker modules: each name they define is used.
AREA = (
    "deid/cli.py",
    "deid/argtypes.py",
    "deid/batch.py",
    "deid/report/*.py",
    "deid/service/*.py",
    "workers/*.py",
)
USERS = ("deid", "workers", "tests", "bench")


def _defined(tree: ast.Module) -> list[tuple[str, int]]:
    """Top-level functions, classes and constants, and methods, that nothing calls implicitly
    (no decorator, no dunder)."""
    out: list[tuple[str, int]] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if not node.decorator_list:
                out.append((node.name, node.lineno))
            if isinstance(node, ast.ClassDef):
                out += [
                    (m.name, m.lineno)
                    for m in node.body
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and not m.decorator_list
                    and not m.name.startswith("__")
                ]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out += [(t.id, node.lineno) for t in targets if isinstance(t, ast.Name)]
    return out


def _used() -> set[str]:
    """Every name read, attribute taken, name imported, or identifier-like string (``__all__``,
    ``getattr``) in the package, the workers, the tests and the benchmarks."""
    used: set[str] = set()
    for folder in USERS:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                    used.add(node.id)
                elif isinstance(node, ast.Attribute):
                    used.add(node.attr)
                elif isinstance(node, ast.alias):
                    used.add(node.name.rsplit(".", 1)[-1])
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    used.add(node.value)
    return used


def test_no_dead_code_in_the_commands_and_the_service() -> None:
    """A function, class, method or constant of these modules that nothing uses is dead code:
    it reads as if it mattered (a stage order the engine does not follow, a validation no
    request goes through, a limit nobody applies)."""
    from deid.service.jobs import STAGE_STATE

    used = _used() | {f"_{stage}" for stage in STAGE_STATE}  # Engine.run: getattr(f"_{stage}")
    dead = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for pattern in AREA
        for path in sorted(REPO.glob(pattern))
        for name, line in _defined(ast.parse(path.read_text()))
        if name not in used and name not in ("log", "__all__")
    ]
    assert dead == []


def test_report_and_service_functions_fit_on_a_screen() -> None:
    """No function of deid.report or deid.service runs past 80 lines (docstring included):
    a longer one is split into named parts (a page's sections, a figure's panels)."""
    long = [
        f"{path.relative_to(REPO)}:{node.lineno}: {node.name} ({n} lines)"
        for pattern in ("deid/report/*.py", "deid/service/*.py")
        for path in sorted(REPO.glob(pattern))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (n := node.end_lineno - node.lineno + 1) > 80  # type: ignore[operator]
    ]
    assert long == []


def test_the_command_line_builds_without_torch_and_lists_the_registrys_attacks() -> None:
    """`deid --help` stays quick: building every parser imports no torch (a fresh process),
    and `--attack`'s static list is the registry's."""
    code = (
        "import sys; from deid.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False", out.stderr

    from deid.argtypes import DEFAULT_ATTACK, PIPELINE_ATTACKS
    from deid.attacks.registry import default_attack, pipeline_attacks

    assert tuple(pipeline_attacks()) == PIPELINE_ATTACKS
    assert default_attack().name == DEFAULT_ATTACK


# --------------------------------------------------------------------------------------------
# imports: no cycle among deid's modules, no private name imported across modules
# --------------------------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    """deid's modules by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in (REPO / "deid").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(
    name: str, source: str, is_package: bool, modules: Iterable[str]
) -> list[tuple[str, str | None]]:
    """(module, imported name or None) of every import in module ``name``'s ``source``, at
    any depth: module level, inside functions, under ``TYPE_CHECKING``. ``from pkg import
    sub`` imports the submodule; ``from pkg import name`` the package."""
    modules = set(modules)
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1
                package = name.split(".")[: None if is_package else -1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for a in node.names:
                if f"{base}.{a.name}" in modules:
                    out.append((f"{base}.{a.name}", None))
                elif base in modules:
                    out.append((base, a.name))
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or a module that
    imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_and_no_private_import_across_modules() -> None:
    """Every import counts, lazy ones and ``TYPE_CHECKING`` ones too: a cycle that only a
    lazy import keeps from failing is still two modules that cannot be read apart."""
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        source, is_package = path.read_text(), path.name == "__init__.py"
        for target, imported in _imports(name, source, is_package, modules):
            edges[name].add(target)
            if imported and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{name}: from {target} import {imported}")
    assert _cycles(edges) == []
    assert private == []


def test_the_import_checker_sees_cycles_and_private_imports() -> None:
    """The checker above on made-up modules: a lazy two-module cycle, a private name."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    modules = ["deid.p", "deid.p.x", "deid.p.y"]
    lazy = "def f():\n    from .x import _secret\n    from deid.p import y, run\n"
    assert _imports("deid.p.y", lazy, False, modules) == [
        ("deid.p.x", "_secret"),
        ("deid.p.y", None),
        ("deid.p", "run"),
    ]
