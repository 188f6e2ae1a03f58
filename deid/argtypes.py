"""Values people type, parsed once for the command line and the config: fractions such as
``16/255`` (what people write for 8-bit budgets), lists of them, the settings flags of ``deid
run``, ``deid batch`` and ``deid submit``, and the flags every ``deid eval`` report shares."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from deid.errors import ConfigError

log = logging.getLogger(__name__)


def parse_fraction(text: str) -> float:
    """``0.063`` or ``16/255`` -> float: the one parser of fractions (flags, config fields).

    Raises:
        ValueError: not a number or a fraction (the message says what is expected).
    """
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a number such as 0.063 or 16/255, got {text!r}") from None


def fraction(text: str) -> float:
    """:func:`parse_fraction` as an argparse ``type``.

    Raises:
        argparse.ArgumentTypeError: not a number or a fraction.
    """
    try:
        return parse_fraction(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def fraction_flag(text: str, flag: str) -> float:
    """:func:`parse_fraction` of a flag's text read after argparse (``deid eval``'s budgets).

    Raises:
        ConfigError: not a number or a fraction (the message names ``flag``).
    """
    try:
        return parse_fraction(text)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from None


def fraction_list(text: str, flag: str) -> list[float]:
    """Comma-separated fractions (``4/255,8/255``) -> floats; empty items are skipped.

    Raises:
        ConfigError: an item is not a number or a fraction (the message names ``flag``).
    """
    return [fraction_flag(e.strip(), flag) for e in text.split(",") if e.strip()]


#: The attacks the pipeline takes, in the registry's order, and the default: `--attack`'s help
#: without importing the registry (and torch) when a parser is built; tests/test_layout.py
#: checks them against the registry.
PIPELINE_ATTACKS = (
    "ifgsm",
    "realistic",
    "conceal",
    "fgsm",
    "illc",
    "pgd",
    "mifgsm",
    "cw",
    "lbfgs",
    "deepfool",
    "jsma",
    "spsa",
    "feature",
    "ead",
    "onepixel",
    "universal",
    "advgan",
    "replace",
)
DEFAULT_ATTACK = "ifgsm"


def attack_help() -> str:
    """`--attack`'s help: the attacks the pipeline takes (it runs them targeted). From the
    registry itself once something has imported it (attacks registered from outside the
    package among them), else from :data:`PIPELINE_ATTACKS`."""
    registry = sys.modules.get("deid.attacks.registry")
    if registry is not None:
        names, default = list(registry.pipeline_attacks()), registry.default_attack().name
    else:
        names, default = list(PIPELINE_ATTACKS), DEFAULT_ATTACK
    names = [f"{n} (default)" if n == default else n for n in names]
    return "the attack, run targeted: " + ", ".join(names)


# The settings flags of `deid run`, `deid batch` and `deid submit`: the setting each sets
# and how add_setting_flags declares it (a ``--no-`` switch sets its setting to False; a
# callable help is called when the flag is declared).
_SETTING_FLAG_TABLE: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("classifier.name", "--classifier", {"help": "yaleb-mlp, celeba-cnn, or a checkpoint path"}),
    ("attack.name", "--attack", {"help": attack_help}),  # from the registry, when declared
    (
        "attack.target",
        "--target",
        {"help": "least-likely, nearest, random, lookalike, or a class id / name"},
    ),
    ("attack.eps", "--eps", {"type": fraction, "help": "L-inf bound, e.g. 0.063 or 16/255"}),
    ("attack.steps", "--steps", {"type": int, "help": "attack iterations"}),
    ("pipeline.device", "--device", {"help": "auto, cpu, cuda or cuda:N"}),
    (
        "pipeline.fallback",
        "--fallback",
        {"help": "what a face whose attack failed gets: pixelate, blur or black"},
    ),
    (
        "pipeline.privacy",
        "--strict",
        {
            "action": "store_const",
            "const": "strict",
            "help": "strict privacy: also obscure every face the independent judge still links "
            "to its original in the written output (needs pip install 'deid[judge]')",
        },
    ),
    (
        "pipeline.verify",
        "--no-verify",
        {"action": "store_true", "help": "skip re-reading and re-classifying the output"},
    ),
    (
        "pipeline.chunk_frames",
        "--chunk-frames",
        {"type": int, "help": "frames per chunk (default from settings)"},
    ),
    (
        "pipeline.workers",
        "--workers",
        {
            "type": int,
            "help": "processes that analyse and render a video's chunks (each loads the "
            "models; at most one per chunk; the output is the same)",
        },
    ),
)
# The setting each settings flag sets: what setting_overrides makes of the flag, and what a
# message about its value names (load_settings(..., flags=SETTING_FLAGS)).
SETTING_FLAGS = {setting: flag for setting, flag, _ in _SETTING_FLAG_TABLE}
_FLAG_ARGS = {flag: args for _, flag, args in _SETTING_FLAG_TABLE}

#: The settings flags of the classifier to fool and the attack that fools it.
ATTACK_FLAGS = ("--classifier", "--attack", "--target", "--eps", "--steps")


def add_setting_flags(p: argparse.ArgumentParser, *flags: str) -> None:
    """Declare the settings ``flags`` (of :data:`SETTING_FLAGS`) on a command's parser, in
    the order given; :func:`setting_overrides` reads them back."""
    for flag in flags:
        args = dict(_FLAG_ARGS[flag])
        if callable(args.get("help")):
            args["help"] = args["help"]()
        p.add_argument(flag, **args)


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the settings flags in ``args`` set, nested as ``load_settings`` takes
    them (``--eps 8/255 --no-verify`` -> ``{"attack": {"eps": 0.031...}, "pipeline":
    {"verify": False}}``). A flag not given (or a command without it) sets nothing; a value
    given is passed on as typed, even ``0`` or empty, for the settings to accept or refuse."""
    overrides: dict[str, Any] = {}
    for setting, flag in SETTING_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is None or value is False:  # not given, or a switch left off
            continue
        if flag.startswith("--no-"):
            value = False
        section, key = setting.split(".")
        overrides.setdefault(section, {})[key] = value
    return overrides


def add_report_flags(p: argparse.ArgumentParser) -> None:
    """The flags every ``deid eval`` report command shares: data, seed, device, threads and
    the output folder."""
    p.add_argument("--data", type=Path, help="dataset npz (default: the checkpoints' own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the report")


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (torch's CPU threads) when it was given."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def print_report(paths: dict[str, Path]) -> None:
    """Print a written report's Markdown table and log where its files went."""
    sys.stdout.write(paths["md"].read_text())
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
