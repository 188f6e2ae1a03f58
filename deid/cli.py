"""Command line: ``deid run|train|eval|data``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from deid.argtypes import fraction
from deid.errors import DeidError

log = logging.getLogger("deid")


_eps = fraction  # the name the other parsers import


def attack_help() -> str:
    """`--attack`'s help: the registry's attacks that `deid run` takes (it runs them targeted)."""
    from deid.attacks.registry import default_attack, pipeline_attacks

    default = default_attack().name
    names = [f"{n} (default)" if n == default else n for n in pipeline_attacks()]
    return "the attack, run targeted: " + ", ".join(names)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="de-identify a video, an image or a folder of images")
    p.add_argument("input", type=Path, help="video file, image, or folder of images (recursive)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output file or folder (mirrors the input tree)",
    )
    p.add_argument(
        "--config", help="YAML file or a name in configs/ (default: configs/default.yaml)"
    )
    p.add_argument("--classifier", help="yaleb-mlp, celeba-cnn, or a checkpoint path")
    p.add_argument("--attack", help=attack_help())
    p.add_argument("--target", help="least-likely, nearest, random, or a class id / name")
    p.add_argument("--eps", type=_eps, help="L-inf bound, e.g. 0.063 or 16/255")
    p.add_argument("--steps", type=int, help="attack iterations")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--fallback", help="what a face whose attack failed gets: pixelate, blur or black"
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip re-reading and re-classifying the output"
    )
    p.add_argument("--contact-sheet", type=Path, help="also write a PNG of faces before/after")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from deid.models.train import RECIPES, add_training_flags

    p = sub.add_parser("train", help="train an identity classifier")
    p.add_argument("preset", choices=sorted(RECIPES))
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="checkpoint to write (.pt; a .json beside it)",
    )
    p.add_argument(
        "--data", type=Path, help="dataset npz (default: the shared file under DEID_DATA_DIR)"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split",
        choices=["random", "azimuth"],
        default="random",
        help="Yale B only: random per-identity hold-out, or train on |azimuth| <= 25 deg",
    )
    p.add_argument(
        "--min-std",
        type=float,
        help="Yale B presets: floor on each image's std in the per-image normalisation",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    add_training_flags(p)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure classifiers and attacks")
    esub = p.add_subparsers(dest="what", required=True)
    c = esub.add_parser("classifier", help="held-out accuracy of a checkpoint")
    c.add_argument("checkpoint", help="yaleb-mlp, celeba-cnn or a path")
    c.add_argument("--data", type=Path)
    a = esub.add_parser("attack", help="targeted success vs eps, and the realistic attack's PSNR")
    a.add_argument("--classifier", default="celeba-cnn")
    a.add_argument("--data", type=Path)
    a.add_argument("-n", type=int, default=200, help="held-out faces")
    a.add_argument("--eps", default="2/255,4/255,8/255,16/255,32/255", help="comma-separated")
    a.add_argument("--targets", default="least-likely,nearest")
    a.add_argument("--steps", type=int, default=20)
    a.add_argument("--alpha", type=_eps, default=2 / 255)
    a.add_argument("--no-realistic", action="store_true")
    a.add_argument("--json", type=Path, help="also write the figures as JSON")
    a.add_argument("--device", default="auto")
    __import__("deid.survival", fromlist=["add_parser"]).add_parser(esub)
    __import__("deid.evaluate", fromlist=["add_dataset_parser"]).add_dataset_parser(esub)
    __import__("deid.robustness", fromlist=["add_parser"]).add_parser(esub)
    __import__("deid.transfer", fromlist=["add_parser"]).add_parser(esub)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="what", required=True)
    q = dsub.add_parser("prepare", help="official dataset layout -> deid's npz format")
    q.add_argument("dataset", choices=["yaleb", "celeba"])
    q.add_argument(
        "source",
        type=Path,
        help="CroppedYale/ or a folder with img_align_celeba/ + identity_CelebA.txt",
    )
    q.add_argument("-o", "--output", type=Path, required=True)
    q.add_argument("--size", help="Yale B: HxW to box-resize to, e.g. 48x42")
    q.add_argument(
        "--min-images", type=int, default=20, help="CelebA: keep identities with this many images"
    )
    q.add_argument("--max-identities", type=int, help="CelebA: keep at most this many identities")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deid", description="De-identify faces in drone footage with adversarial examples."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_data(sub)
    __import__("deid.batch").batch.add_parser(sub)
    __import__("deid.report.html", fromlist=["add_parser"]).add_parser(sub)
    __import__("deid.service.cli").service.cli.add_parser(sub)
    return parser


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if args.classifier:
        o.setdefault("classifier", {})["name"] = args.classifier
    attack: dict[str, Any] = {}
    if args.attack:
        attack["name"] = args.attack
    if args.target:
        attack["target"] = args.target
    if args.eps is not None:
        attack["eps"] = args.eps
    if args.steps is not None:
        attack["steps"] = args.steps
    if attack:
        o["attack"] = attack
    pipe: dict[str, Any] = {}
    if args.device:
        pipe["device"] = args.device
    if args.fallback:
        pipe["fallback"] = args.fallback
    if args.no_verify:
        pipe["verify"] = False
    if pipe:
        o["pipeline"] = pipe
    return o


def cmd_run(args: argparse.Namespace) -> int:
    from deid.attacks import ATTACKS
    from deid.config import load_settings
    from deid.pipeline import run

    if args.attack and args.attack not in ATTACKS:
        raise DeidError(f"unknown attack {args.attack!r}; available: {sorted(ATTACKS)}")
    settings = load_settings(args.config, _run_overrides(args))
    report = run(
        args.input, args.output, settings, progress=not args.quiet, contact_sheet=args.contact_sheet
    )
    t = report["totals"]
    log.info(
        "%d frames, %d faces: %d de-identified, %d fail-closed; "
        "verified: %s as target, %s as original",
        t["frames"],
        t["faces"],
        t["attack_succeeded"],
        t["fail_closed"],
        t["verified_target_rate"],
        t["verified_original_rate"],
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from deid.models.train import train_classifier, training_options
    from deid.pipeline import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    command = "deid " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _, metrics = train_classifier(
        args.preset,
        args.output,
        data=args.data,
        epochs=args.epochs,
        seed=args.seed,
        device=str(resolve_device(args.device)),
        split=args.split,
        command=command,
        min_std=args.min_std,
        **training_options(args),
    )
    sys.stdout.write(json.dumps({k: v for k, v in metrics.items() if k != "split"}) + "\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from deid import evaluate

    if args.what == "classifier":
        result = evaluate.classifier_accuracy(args.checkpoint, data=args.data)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    eps = [_eps(e) for e in args.eps.split(",") if e]
    table = evaluate.attack_table(
        args.classifier,
        data=args.data,
        n=args.n,
        eps_list=eps,
        target_modes=args.targets.split(","),
        steps=args.steps,
        alpha=args.alpha,
        realistic=not args.no_realistic,
        device=args.device,
    )
    sys.stdout.write(evaluate.format_table(table) + "\n")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from deid.data.prepare import PREPARERS

    kwargs: dict[str, Any] = {}
    if args.dataset == "yaleb" and args.size:
        h, w = (int(v) for v in args.size.lower().split("x"))
        kwargs["size"] = (h, w)
    if args.dataset == "celeba":
        kwargs.update(min_images=args.min_images, max_identities=args.max_identities)
    summary = PREPARERS[args.dataset](args.source, args.output, **kwargs)
    sys.stdout.write(json.dumps(summary, default=str) + "\n")
    return 0


COMMANDS = {"run": cmd_run, "train": cmd_train, "eval": cmd_eval, "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        # Subcommands defined in other modules set ``func`` (set_defaults); the core ones are here.
        handler = getattr(args, "func", None) or COMMANDS[args.command]
        return handler(args)
    except DeidError as e:
        sys.stderr.write(f"deid: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("deid: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
