"""Command line: ``deid run|train|eval|data``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deid import __version__
from deid.argtypes import ATTACK_FLAGS, SETTING_FLAGS, add_setting_flags, setting_overrides
from deid.errors import ConfigError, DeidError

log = logging.getLogger("deid")


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
    add_setting_flags(
        p,
        *ATTACK_FLAGS,
        "--device",
        "--fallback",
        "--strict",
        "--no-verify",
        "--chunk-frames",
        "--workers",
    )
    p.add_argument(
        "--contact-sheet",
        type=Path,
        help="also write a PNG of the faces before (pixelated) and after",
    )
    p.add_argument(
        "--show-originals",
        action="store_true",
        help="the contact sheet shows the clear original faces (it says so in its title)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from deid.generators.recipes import add_advgan_flags
    from deid.models.recipes import RECIPES, add_training_flags

    p = sub.add_parser(
        "train", help="train an identity classifier, or an AdvGAN generator against one"
    )
    p.add_argument(
        "preset",
        choices=[*sorted(RECIPES), "advgan", "facegan"],
        help="a classifier preset, advgan (with --classifier), or facegan (face replacement)",
    )
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
    add_advgan_flags(p)
    g = p.add_argument_group("facegan (deid train facegan; --init also for advgan)")
    g.add_argument("--width", type=int, help="facegan: channels of the first layer (16)")
    g.add_argument("--batch-size", dest="gan_batch", type=int, help="facegan: batch (32)")
    g.add_argument(
        "--max-minutes", type=float, help="facegan: stop after an epoch past this many minutes"
    )
    g.add_argument(
        "--init",
        type=Path,
        help="facegan or advgan: fine-tune this generator checkpoint (facegan: its sizes and "
        "held-out identities; advgan: the recipe's network against the same classifier)",
    )
    g.add_argument("--d-width", type=int, help="facegan: the discriminator's width (--width)")
    g.add_argument(
        "--cutout",
        type=float,
        default=0.5,
        help="facegan: DiffAugment's cutout square, a fraction of the crop (0.5; 0: none)",
    )
    g.add_argument(
        "--identity-weight",
        type=float,
        default=0.0,
        help="facegan: weight of an identity term on deid's CelebA CNN (the new face as far "
        "from the original as another person's; 0: none)",
    )
    g.add_argument(
        "--r1-gamma", type=float, default=1.0, help="facegan: the R1 penalty's weight (1; 0: none)"
    )


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
    parser.add_argument("--version", action="version", version=f"deid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_train(sub)
    __import__("deid.eval.cli", fromlist=["add_parser"]).add_parser(sub)
    _add_data(sub)
    __import__("deid.batch").batch.add_parser(sub)
    __import__("deid.stream").stream.add_parser(sub)
    __import__("deid.report.html", fromlist=["add_parser"]).add_parser(sub)
    __import__("deid.service.cli").service.cli.add_parser(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from deid.config import load_settings
    from deid.pipeline import run

    if args.show_originals and args.contact_sheet is None:
        raise ConfigError("--show-originals: expected --contact-sheet PATH with it")
    settings = load_settings(args.config, setting_overrides(args), flags=SETTING_FLAGS)
    report = run(
        args.input,
        args.output,
        settings,
        progress=not args.quiet,
        contact_sheet=args.contact_sheet,
        show_originals=args.show_originals,
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
    j = report.get("judge") or {}
    if j.get("status") == "judged" and j["totals"]["faces"]:
        jt = j["totals"]
        every = j.get("every") or 1
        log.info(
            "judge (%s privacy): %d of %d %s still linked to their original, %d of them "
            "left natural; %d obscured because the judge linked them",
            j["privacy"],
            jt["linked"],
            jt["faces"],
            "faces" if every == 1 else f"faces judged (1 in {every} of each track)",
            jt["linked_natural"],
            j["repaired_judge_linked"],
        )
    elif j.get("status") == "not judged":
        log.info("not judged by the independent judge: %s", j["reason"])
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from deid.models.recipes import training_options
    from deid.models.train import train_classifier
    from deid.pipeline import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    command = "deid " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.preset == "advgan":
        return _train_advgan(args, command, str(resolve_device(args.device)))
    if args.preset == "facegan":
        return _train_facegan(args, command, str(resolve_device(args.device)))
    if _facegan_only(args) or args.init:
        raise ConfigError(
            "--width, --batch-size, --max-minutes, --init, --d-width, --identity-weight, "
            "--cutout and --r1-gamma only apply to facegan"
        )
    if args.classifier:
        raise ConfigError("--classifier only applies to `deid train advgan`")
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


def _facegan_only(args: argparse.Namespace) -> bool:
    """Whether a flag that only `deid train facegan` takes was given (``--init`` aside: it
    also fine-tunes AdvGAN generators)."""
    return bool(
        args.width
        or args.gan_batch
        or args.max_minutes
        or args.d_width
        or args.identity_weight
        or args.cutout != 0.5
        or args.r1_gamma != 1.0
    )


def _train_advgan(args: argparse.Namespace, command: str, device: str) -> int:
    from deid.generators.recipes import advgan_recipe
    from deid.generators.train_advgan import train_advgan
    from deid.models.recipes import training_options

    if not args.classifier:
        raise ConfigError("deid train advgan: expected --classifier yaleb-mlp|celeba-cnn|PATH")
    if any(training_options(args).values()) or args.min_std or args.split != "random":
        raise ConfigError("deid train advgan: the classifier-training flags do not apply")
    if _facegan_only(args):
        raise ConfigError(
            "deid train advgan: --width, --batch-size, --max-minutes, --d-width, "
            "--identity-weight, --cutout and --r1-gamma only apply to facegan"
        )
    _, figures = train_advgan(
        args.classifier,
        args.output,
        advgan_recipe(args.classifier, args),
        data=args.data,
        seed=args.seed,
        device=device,
        command=command,
        samples_dir=args.samples_dir,
        init=args.init,
    )
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


def _train_facegan(args: argparse.Namespace, command: str, device: str) -> int:
    from deid.generators.train_facegan import train_facegan
    from deid.models.recipes import training_options

    if args.classifier or any(training_options(args).values()) or args.min_std:
        raise ConfigError("deid train facegan: the classifier and AdvGAN flags do not apply")
    _, figures = train_facegan(
        args.output,
        data=args.data,
        epochs=args.epochs or 30,
        batch_size=args.gan_batch or 32,
        width=args.width or 16,
        seed=args.seed,
        device=device,
        command=command,
        samples_dir=args.samples_dir,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        init=args.init,
        identity_weight=args.identity_weight,
        d_width=args.d_width,
        cutout=args.cutout,
        r1_gamma=args.r1_gamma,
    )
    sys.stdout.write(json.dumps(figures) + "\n")
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


COMMANDS = {"run": cmd_run, "train": cmd_train, "data": cmd_data}


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that every ``finally`` runs (work
    folders and temporary files are removed, as on Ctrl-C). A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` swallows it."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the command runs, the first SIGTERM raises :class:`Terminated`; later ones are
    ignored so they cannot cut the clean-up short (SIGKILL still ends the process)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        # Subcommands defined in other modules set ``func`` (set_defaults); the core ones are here.
        handler = getattr(args, "func", None) or COMMANDS[args.command]
        with _sigterm_raises():
            return handler(args)
    except DeidError as e:
        sys.stderr.write(f"deid: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("deid: interrupted\n")
        return 130
    except Terminated:
        sys.stderr.write("deid: terminated (SIGTERM)\n")
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
