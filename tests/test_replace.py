"""Face replacement (``--attack replace``): the generator's contract and checkpoints, its
training command, the replacement's geometry in a crop (only the face region changes, one
new face per track), and ``deid run --attack replace`` on a real photo, judged."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deid import judge
from deid.align import box_landmarks
from deid.cli import main
from deid.config import load_settings
from deid.errors import CheckpointError, ConfigError, OutputError
from deid.generators.base import AutoFollow, follow_attack
from deid.generators.facegan import (
    FaceDiscriminator,
    FaceGANMeta,
    FaceGenerator,
    diff_augment,
    ellipse_mask,
    z_for_tracks,
)
from deid.generators.replace import SHIPPED, ReplaceConfig, ReplaceFaces
from deid.generators.train_facegan import holdout_split, train_facegan
from deid.pipeline import GENERATORS, build_protector
from deid.pipeline.protect import GeneratorProtector
from deid.targets import LOOKALIKE_AVOID

from .conftest import SCENES

needs_judge = pytest.mark.skipif(
    not judge.available(), reason=f"the judge's extra is not installed ({judge.INSTALL_HINT})"
)


def _tiny(seed: int = 0) -> FaceGenerator:
    torch.manual_seed(seed)
    return FaceGenerator(FaceGANMeta(width=8, z_dim=8)).eval()


def test_mask_is_one_inside_zero_outside_and_soft_between() -> None:
    m = ellipse_mask(1, (64, 64), (0.5, 0.56, 0.40, 0.46), 0.06)[0, 0]
    assert m[36, 32] == 1.0  # the centre
    assert m[0, 0] == 0.0 and m[63, 63] == 0.0 and m[0, 63] == 0.0  # the corners
    edge = m[36, 32:].numpy()  # along a row from the centre to the right edge
    assert ((edge > 0) & (edge < 1)).any()  # a soft edge
    assert np.all(np.diff(edge) <= 1e-6)  # falling outward
    jittered = ellipse_mask(8, (64, 64), (0.5, 0.56, 0.4, 0.46), 0.06, 0.12, torch.Generator())
    assert len({float(j.sum()) for j in jittered}) > 1  # training masks vary


def test_generator_keeps_the_context_and_the_latent_chooses_the_face() -> None:
    g = _tiny()
    x = torch.rand(2, 3, 64, 64)
    m = g.mask(2)
    z = torch.randn(2, 8)
    with torch.no_grad():
        out = g.composite(x, m, z)
        assert torch.equal(out[m.expand_as(out) == 0], x[m.expand_as(x) == 0])  # ring kept
        assert torch.equal(out, g.composite(x, m, z))  # deterministic in eval mode
        other = g.composite(x, m, torch.randn(2, 8))
    assert not torch.allclose(out, other)  # another latent, another face
    # the original face inside the mask never reaches the network
    x2 = x.clone()
    x2[m.expand_as(x) == 1] = torch.rand(int((m == 1).sum()) * 3)
    with torch.no_grad():
        assert torch.allclose(g(x, m, z), g(x2, m, z))


def test_discriminator_and_augmentation_shapes() -> None:
    d = FaceDiscriminator(8)
    x = torch.rand(4, 3, 64, 64, requires_grad=True)
    m = ellipse_mask(4, (64, 64), (0.5, 0.56, 0.4, 0.46), 0.06)
    xa, ma = diff_augment(x, m, torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and ma.shape == m.shape
    score = d(xa, ma)
    assert score.shape == (4,)
    score.sum().backward()  # differentiable through the augmentation
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_latent_per_track_is_stable_and_distinct() -> None:
    a = z_for_tracks(torch.tensor([3, 4, 3]), 16, seed=0)
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    assert torch.equal(a, z_for_tracks(torch.tensor([3, 4, 3]), 16, seed=0))
    assert not torch.equal(a[0], z_for_tracks(torch.tensor([3]), 16, seed=1)[0])


def test_checkpoint_round_trip_and_bad_files(tmp_path: Path) -> None:
    g = _tiny()
    g.meta.template = [[0.37, 0.47], [0.63, 0.47], [0.5, 0.6], [0.4, 0.75], [0.6, 0.75]]
    path = tmp_path / "g.pt"
    g.save(path)
    assert json.loads(path.with_suffix(".json").read_text())["z_dim"] == 8
    h = FaceGenerator.load(path)
    x, m, z = torch.rand(1, 3, 64, 64), g.mask(1), torch.randn(1, 8)
    with torch.no_grad():
        assert torch.equal(g(x, m, z), h(x, m, z))
    with pytest.raises(CheckpointError, match="not found"):
        FaceGenerator.load(tmp_path / "missing.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a deid face generator"):
        FaceGenerator.load(tmp_path / "other.pt")


def test_training_holds_identities_out_and_writes_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "fg.pt"
    _, figures = train_facegan(
        out, epochs=1, width=4, z_dim=4, limit=48, samples_dir=tmp_path / "s", seed=3
    )
    meta = json.loads(out.with_suffix(".json").read_text())
    held = set(meta["data"]["holdout_identities"])
    assert len(held) == 25 and meta["training"]["epochs_done"] == 1
    assert (tmp_path / "s" / "epoch-001.png").is_file()
    assert 0.0 <= figures["own_classifier_still_recognised"] <= 1.0
    from deid.data import load_dataset

    ds = load_dataset("celeba")
    train, held2 = holdout_split(ds, 25, 3)
    assert set(held2.tolist()) == held
    assert not held & set(ds.labels[train].tolist())  # no held-out identity is trained on
    assert not set(train.tolist()) & set(ds.test.tolist())  # nor any test image
    assert FaceGenerator.load(out).meta.data["holdout_identities"] == sorted(held)


def test_fine_tune_keeps_the_first_stage_held_out_and_records_its_recipe(
    tmp_path: Path,
) -> None:
    first = tmp_path / "first.pt"
    train_facegan(first, epochs=1, width=4, z_dim=4, limit=32, seed=3)
    out = tmp_path / "second.pt"
    g, figures = train_facegan(
        out,
        epochs=1,
        limit=32,
        seed=5,
        init=first,
        d_warmup=2,
        d_width=8,
        cutout=0.25,
        r1_gamma=0,
        identity_weight=2.0,
    )
    meta = json.loads(out.with_suffix(".json").read_text())
    before = json.loads(first.with_suffix(".json").read_text())
    # the first stage's identities stay out (not those seed 5 would hold out)
    assert meta["data"]["holdout_identities"] == before["data"]["holdout_identities"]
    assert meta["data"]["init"]["file"] == "first.pt" and g.meta.width == 4
    tr = meta["training"]
    assert tr["discriminator_warmup_steps"] == 2 and tr["d_width"] == 8 and tr["r1_gamma"] == 0
    assert "cutout 0.25" in tr["augment"] and tr["first_stage"]["training"]["epochs_done"] == 1
    assert tr["lr"] == 1e-4  # half the first stage's
    assert tr["lambda_id"] == 2.0 and 0.0 < tr["id_margin"] < 1.0  # two people's mean cosine
    assert "id_cosine" in tr["last_losses"]
    assert -1.0 <= figures["own_embedding_cosine_to_original"] <= 1.0
    with pytest.raises(OutputError, match="generator to fine-tune"):
        train_facegan(first, epochs=1, limit=32, init=first)  # never overwrite the input
    with pytest.raises(ConfigError, match=r"cutout must be a fraction of the crop in \[0, 1\)"):
        train_facegan(tmp_path / "x.pt", init=first, cutout=1.5)


def test_identity_term_is_one_for_the_same_face_and_keeps_shapes() -> None:
    from deid.data import load_dataset
    from deid.generators.train_facegan import IdentityTerm, small_and_shifted
    from deid.models import load_classifier

    ds = load_dataset("celeba")
    x, y = ds.tensors_at(ds.train[:300])
    term = IdentityTerm(load_classifier("celeba-cnn"), x, y, torch.Generator().manual_seed(0))
    assert small_and_shifted(x[:4], torch.Generator().manual_seed(1)).shape == (4, 3, 64, 64)
    same = term.cosine(x[:8], x[:8].clone(), torch.Generator().manual_seed(2))
    assert torch.allclose(same, torch.ones(8), atol=1e-4)
    assert term.margin < 0.9  # different people are further apart than a face and itself


# --------------------------------------------------------------------------------------------
# the shipped generator in the pipeline
# --------------------------------------------------------------------------------------------
def test_colour_match_moves_brightness_and_keeps_the_new_faces_colours() -> None:
    """luma (default): one shift in R, G and B, to the original's mean brightness inside the
    mask; rgb: each channel's mean; true / false as they meant until 2026-12-06."""
    from deid.generators.replace import _LUMA, _match_mean

    g = torch.Generator().manual_seed(0)
    face = 0.3 + 0.4 * torch.rand(2, 3, 16, 16, generator=g)
    original = 0.2 + 0.3 * torch.rand(2, 3, 16, 16, generator=g)
    original[:, 2] += 0.3  # a blue cast around the face
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1.0
    luma = torch.tensor(_LUMA).view(1, 3, 1, 1)

    def mean(x: torch.Tensor) -> torch.Tensor:
        return (x * mask).sum((2, 3)) / mask.sum((2, 3))

    out = _match_mean(face, original, mask, "luma")
    assert torch.allclose(mean((out * luma).sum(1, True)), mean((original * luma).sum(1, True)))
    assert torch.allclose(out[:, 2] - out[:, 0], face[:, 2] - face[:, 0], atol=1e-6)  # no cast
    rgb = _match_mean(face, original, mask, "rgb")
    assert torch.allclose(mean(rgb), mean(original), atol=1e-6)
    assert ReplaceConfig().colour_match == "luma"
    assert ReplaceConfig(colour_match=True).colour_match == "rgb"
    assert ReplaceConfig(colour_match=False).colour_match == "none"
    with pytest.raises(ValueError, match="luma"):
        ReplaceConfig(colour_match="blue")


def test_then_auto_is_advgan_where_a_generator_was_trained_against_the_classifier() -> None:
    """`then: auto`: the shipped AdvGAN generator whose fingerprint is the
    classifier's, plain I-FGSM for a classifier no generator was trained against (its
    weights changed) or a model that is not one of deid's classifiers; the AdvGAN it runs
    reaches the targets of generated faces."""
    from deid.eval.common import dataset_of, sample_test
    from deid.models import load_classifier
    from deid.targets import lookalike_targets

    follow = follow_attack("auto", ReplaceConfig().then_params)
    assert isinstance(follow, AutoFollow)
    clf = load_classifier("celeba-cnn", "cpu").eval()
    assert follow.resolve(clf) == "advgan"
    changed = load_classifier("celeba-cnn", "cpu").eval()
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert follow.resolve(changed) == "ifgsm"
    assert follow.resolve(torch.nn.Linear(4, 4)) == "ifgsm"

    x, _ = sample_test(dataset_of(clf), 16, seed=3)
    new = ReplaceFaces(ReplaceConfig(then=None)).generate(
        x, torch.full((16, 5, 2), float("nan")), torch.arange(16)
    )
    with torch.no_grad():
        t = lookalike_targets(torch.log_softmax(clf(new), 1), clf(x), range(16))
    r = follow(clf, new, t)
    assert float(r.success.float().mean()) >= 0.9
    assert float((r.images - new).abs().max()) <= 16 / 255 + 1e-6
    assert int((r.steps == 0).sum()) >= 8  # most reach the margin in the generator's pass
    # graded (the default): the faces that need less of the pattern get less of it
    assert follow.advgan.cfg.grades == [0.25, 0.5, 1.0]
    # the refinement replace was measured with (EOT, short by EOT's margin), not
    # AdvGAN's own plain steps
    assert follow.advgan.cfg.eot.enabled and follow.advgan.cfg.refine_margin is None
    assert AutoFollow({}).advgan.cfg.steps == 5
    whole = AutoFollow({**ReplaceConfig().then_params, "grades": None})(clf, new, t)
    linf = (r.images - new).flatten(1).abs().amax(1)
    whole_linf = (whole.images - new).flatten(1).abs().amax(1)
    assert int((linf < whole_linf - 1e-6).sum()) >= 4  # a fraction of it was enough
    with pytest.raises(ConfigError, match="unknown setting"):
        AutoFollow({"stepz": 3})


def test_replace_is_a_registered_generator_with_a_targeted_follow_up() -> None:
    assert "replace" in GENERATORS
    s = load_settings(None, {"attack": {"name": "replace"}})
    assert isinstance(s.attack, ReplaceConfig) and s.attack.then == "ifgsm"
    p = build_protector(s.attack)
    assert isinstance(p, GeneratorProtector) and p.then is not None
    assert p.then.cfg.steps == 20 and p.then.cfg.eot.enabled  # the default then_params
    auto = load_settings(None, {"attack": {"name": "replace", "then": "auto"}}).attack
    follow = build_protector(auto).then
    assert isinstance(follow, AutoFollow)
    assert follow.advgan.cfg.steps == 20 and follow.advgan.cfg.eot.enabled  # both get them
    seven = load_settings(None, {"attack": {"name": "replace", "then_params": {"steps": 7}}})
    assert build_protector(seven.attack).then.cfg.steps == 7  # then_params reach the attack
    bare = load_settings(None, {"attack": {"name": "replace", "then": None}}).attack
    assert build_protector(bare).then is None
    meta = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert SHIPPED.stat().st_size < 10 * 2**20 and meta["command"].startswith("deid train facegan")


def test_replacement_changes_only_the_face_region_one_face_per_track() -> None:
    rep = ReplaceFaces(ReplaceConfig(then=None))
    rng = np.random.default_rng(0)
    crop = torch.from_numpy(rng.random((3, 240, 200), np.float32))[None].repeat(3, 1, 1, 1)
    box = np.array([70.0, 80.0, 130.0, 150.0])
    lm = torch.from_numpy(box_landmarks(box))[None].repeat(3, 1, 1)
    out = rep.generate(crop, lm, torch.tensor([7, 7, 8]))
    changed = ((out - crop).abs().amax(1)[0] > 1e-6).numpy()
    # the aligned square the generator works in: eyes as far apart as the template's
    t = np.asarray(rep.gen.meta.template)
    side = float(np.linalg.norm(lm[0, 1] - lm[0, 0])) / float(t[1, 0] - t[0, 0])
    cx, cy = lm[0, :, 0].mean().item(), lm[0, :2, 1].mean().item()
    _, xs = np.nonzero(changed)
    assert np.all(np.abs(xs - cx) <= 0.5 * side + 2)  # nothing outside the square
    assert changed[int(cy), int(cx)]  # the face itself is replaced
    assert changed[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])].mean() > 0.95
    assert not changed[:20].any() and not changed[:, :20].any()  # far away: untouched
    assert torch.equal(out[0], out[1])  # one track, one face
    assert (out[0] - out[2]).abs().mean() > 0.01  # another track, another face


def test_region_scale_grows_the_replaced_region_within_the_trained_range() -> None:
    rng = np.random.default_rng(0)
    crop = torch.from_numpy(rng.random((3, 240, 200), np.float32))[None]
    lm = torch.from_numpy(box_landmarks(np.array([70.0, 80.0, 130.0, 150.0])))[None]
    area = {}
    for scale in (0.9, 1.0, 1.1):
        rep = ReplaceFaces(ReplaceConfig(then=None, region_scale=scale))
        out = rep.generate(crop, lm, torch.tensor([3]))
        area[scale] = int(((out - crop).abs().amax(1)[0] > 1e-6).sum())
    assert area[0.9] < area[1.0] < area[1.1]
    with pytest.raises(ValueError, match="region_scale"):
        ReplaceConfig(region_scale=1.3)  # beyond the masks the generator was trained on


@needs_judge
def test_run_replace_on_a_photo_writes_faces_the_judge_does_not_link(tmp_path: Path) -> None:
    out = tmp_path / "couple.jpg"
    assert (
        main(
            [
                "run",
                str(SCENES / "couple_two_faces.jpg"),
                "-o",
                str(out),
                "--attack",
                "replace",
                "--quiet",
            ]
        )
        == 0
    )
    rep = json.loads(out.with_name("couple.report.json").read_text())
    assert rep["totals"]["faces"] == 2
    assert rep["attack"] == "replace" or rep["settings"]["attack"]["name"] == "replace"
    judged = [f["judge"] for f in rep["faces_detail"]]
    assert all(not j["linked"] and j["natural"] for j in judged), judged
    assert rep["judge"]["totals"]["natural_unlinkable"] == 1.0
    assert rep["totals"]["fail_closed"] == 0  # replaced and targeted, not obscured


@needs_judge
@pytest.mark.slow
def test_eval_replace_reports_regions_no_one_and_realism(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "replace.json"
    assert main(["eval", "replace", "-n", "6", "--gallery-per-id", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "whole crop" in text and "Fréchet" in text
    t = json.loads(out.read_text())
    regions = {r["region"]: r for r in t["regions"]}
    assert len(regions) == 9 and all(0 <= r["unlinkable"] <= 1 for r in regions.values())
    # another real person over the whole crop: the judge sees that person, not the original
    assert regions["whole crop"]["unlinkable"] >= 5 / 6
    g = t["generator_row"]
    assert g["same_latent_identical"] is True
    assert t["no_one"]["n"] == 6 and "generated_on_unseen_contexts" in t["no_one"]
    tail = t["no_one"]["close_to_a_training_identity"]
    assert [r["percentile_of_real"] for r in tail] == [5, 10]
    assert all(0 <= r["fisher_generated_more_p"] <= 1 for r in tail)
    fd = t["realism_frechet"]
    assert fd["none (clean)"] < fd["pixelate"]  # the measure ranks a destroyed face as unreal


def test_eval_dataset_covers_replace(tmp_path: Path) -> None:
    out = tmp_path / "ds.json"
    argv = ["eval", "dataset", "--attack", "replace", "-n", "6", "--no-detect", "--quiet"]
    assert main([*argv, "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["success"] >= 5 / 6  # the targeted steps after the generator reach the target
    assert row["original_recognised"] <= 1 / 6  # and the classifier no longer sees the original


@pytest.mark.slow
def test_replace_on_a_clip_slice_keeps_one_face_per_track(tmp_path: Path) -> None:
    """Six frames of the pedestrian clip at 960x540: every face replaced and targeted (or
    obscured), the frame count kept, and a track's new face changes from frame to frame no
    more than 1.5x as much as the original face did (no flicker)."""
    import cv2

    from deid.io import probe_video, read_frames, write_video
    from deid.pipeline import run

    clip = SCENES / "pedestrians_walking_1080p.mp4"
    if not clip.is_file():
        pytest.skip("shared clip not found")
    frames = [
        cv2.resize(f, (960, 540), interpolation=cv2.INTER_AREA)
        for _, f in zip(range(6), read_frames(clip), strict=False)
    ]
    part, out = tmp_path / "part.mp4", tmp_path / "out.mp4"
    write_video(part, frames, probe_video(clip).rate, crf=12)
    s = load_settings(overrides={"pipeline": {"device": "cpu"}, "attack": {"name": "replace"}})
    rep = run(part, out, s, progress=False)
    assert probe_video(out).frame_count == 6
    t = rep["totals"]
    assert t["faces"] >= 12 and t["unprotected_faces"] == 0
    # replace's lookalike target: one per track, never the track's own identity
    for tr in rep["tracks"]:
        assert len(tr["targets_used"]) <= 1 and tr["target"] != tr["pred"], tr
    faces = rep["faces_detail"]
    assert sum(f["action"] == "attacked" for f in faces) >= 0.8 * len(faces)
    written = list(read_frames(out))
    by_track: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for f in faces:
        x1, y1, x2, y2 = f["region"]
        a = cv2.resize(frames[f["frame"]][y1:y2, x1:x2], (48, 48)).astype(np.float32)
        b = cv2.resize(written[f["frame"]][y1:y2, x1:x2], (48, 48)).astype(np.float32)
        by_track.setdefault(f["track"], []).append((f["frame"], a, b))
    d_in, d_out = [], []
    for seq in by_track.values():
        seq.sort(key=lambda r: r[0])
        for (i, a0, b0), (j, a1, b1) in itertools.pairwise(seq):
            if j == i + 1:
                d_in.append(np.abs(a1 - a0).mean())
                d_out.append(np.abs(b1 - b0).mean())
    assert len(d_in) >= 10
    assert np.mean(d_out) <= 1.5 * np.mean(d_in), (np.mean(d_out), np.mean(d_in))


@pytest.mark.parametrize("escalate", [32 / 255, None])
def test_faces_whose_targeted_steps_run_out_get_a_second_round_in_a_larger_ball(
    escalate: float | None,
) -> None:
    """`escalate_eps`: a face whose `then` steps all ran (here: 1 step, a margin no face
    reaches) gets as many steps again, and stays within `escalate_eps` of its generated face
    (the first round alone: within the `then` eps)."""
    from deid.detect import build_detector
    from deid.models import load_classifier
    from deid.pipeline.protect import ProtectContext
    from deid.pipeline.stages import classify, crop, detect

    from .conftest import scene

    s = load_settings(
        None,
        {
            "attack": {
                "name": "replace",
                "then_params": {
                    "steps": 1,
                    "eps": 8 / 255,
                    "alpha": 8 / 255,  # one step crosses the first ball
                    "eot": {"enabled": True, "samples": 2, "margin": 1000.0},
                },
                "escalate_eps": escalate,
            }
        },
    )
    frame = scene("astronaut_single_face.png")
    clf = load_classifier("celeba-cnn", "cpu")
    crops = crop([frame], detect(build_detector(s.detector, "cpu"), [frame]), clf)
    assert len(crops) == 1
    logits = classify(clf, crops, torch.device("cpu"))
    preds = logits.argmax(1)
    targets = logits.argmin(1)
    p = build_protector(s.attack)
    assert (p.escalate is not None) == (escalate is not None)
    generated = p._generate(crops, ProtectContext(clf, targets, preds, torch.device("cpu"), 8))
    torch.manual_seed(0)
    out = p.protect(crops, ProtectContext(clf, targets, preds, torch.device("cpu"), 8))[0]
    linf = np.abs(out.pixels.astype(int) - generated[0].pixels.astype(int)).max() / 255
    assert out.norms["linf"] == pytest.approx(linf, abs=1e-6)
    if escalate is None:
        assert out.steps == 1 and linf <= 8 / 255 + 1e-6
    else:
        assert out.steps == 2 and 8 / 255 < linf <= 32 / 255 + 1e-6


def test_lookalike_target_is_chosen_on_the_new_face_unless_a_target_is_named() -> None:
    """replace's default target (`lookalike`): the identity deid's classifier already sees
    most in the generated face, other than the original face's likeliest few; the targeted
    steps then have less way to go than toward the least-likely identity. A named target
    mode is kept."""
    from deid.detect import build_detector
    from deid.models import load_classifier
    from deid.pipeline.protect import ProtectContext
    from deid.pipeline.resources import resolve_target
    from deid.pipeline.stages import classify, crop, detect

    from .conftest import scene

    s = load_settings(None, {"attack": {"name": "replace"}})
    clf = load_classifier("celeba-cnn", "cpu")
    assert resolve_target(s.attack.target, "replace", clf.meta.class_names) == "lookalike"
    frame = scene("astronaut_single_face.png")
    crops = crop([frame], detect(build_detector(s.detector, "cpu"), [frame]), clf)
    cpu = torch.device("cpu")
    logits = classify(clf, crops, cpu)
    preds = logits.argmax(1)
    p = build_protector(s.attack)
    new = p._generate(crops, ProtectContext(clf, preds, preds, cpu, 8))
    lp = classify(clf, [dataclasses.replace(crops[0], pixels=new[0].pixels)], cpu, 8)[0]
    lp[logits[0].topk(LOOKALIKE_AVOID).indices] = float("-inf")  # whom the original resembles
    lookalike = int(lp.argmax())
    outs = {}
    for mode, provisional in [("lookalike", logits.topk(2).indices[0, 1:]), ("least-likely", None)]:
        targets = provisional if provisional is not None else logits.argmin(1)
        kept: dict[object, int] = {}
        torch.manual_seed(0)
        ctx = ProtectContext(clf, targets, preds, cpu, 8, mode, kept)
        outs[mode] = p.protect(crops, ctx)[0]
        assert outs[mode].success and outs[mode].final == outs[mode].target
    assert outs["lookalike"].target == lookalike not in logits[0].topk(LOOKALIKE_AVOID).indices
    assert outs["least-likely"].target == int(logits.argmin(1)[0])
    assert outs["lookalike"].steps <= outs["least-likely"].steps


def test_replace_clip_bench_sets_labelled_non_faces_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/replace_clip.py gives the judge's rate over faces without the boxes on a sign's
    lettering (labelled by eye), in the clip's own pixels and frame numbers."""
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("replace_clip", bench / "replace_clip.py")
    assert spec is not None and spec.loader is not None
    rc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rc)
    sign = {"frame": 5, "region": [1000, 526, 1029, 555]}  # 1080p, detected on 'Velo...'
    face = {"frame": 5, "region": [1057, 593, 1139, 675]}  # the man just below the sign
    assert rc.non_face(sign, (1920, 1080), 0) and not rc.non_face(face, (1920, 1080), 0)
    sign_720 = {"frame": 5, "region": [667, 351, 686, 370]}  # the same box at 720p
    assert rc.non_face(sign_720, (1280, 720), 0)
    hands = {"frame": 2, "region": [588, 539, 653, 604]}  # 720p, frames 0-2 only
    assert rc.non_face(hands, (1280, 720), 0) and not rc.non_face(hands, (1280, 720), 30)
    faces = [
        {"judge": {"distance": 0.7, "linked": False, "natural": True}},
        {"judge": {"distance": 0.5, "linked": True, "natural": True}},
        {"judge": None},
    ]
    t = rc.judge_on(faces)
    assert (t.faces, t.linked, t.unlinkable) == (2, 1, 0.5)


def test_the_privacy_eval_runs_replace_with_the_settings_of_its_config(tmp_path: Path) -> None:
    """`deid eval privacy --config C.yaml`: the replace rows take C's `attack` section when it
    names replace (here `then: auto`, run as AdvGAN), replace's defaults otherwise;
    `replace-only` drops the `then` step either way."""
    from deid.eval.common import dataset_of, sample_test
    from deid.eval.privacy import _replaced
    from deid.models import load_classifier

    clf = load_classifier("celeba-cnn", "cpu").eval()
    x, _ = sample_test(dataset_of(clf), 4, seed=5)
    with torch.no_grad():
        logits = clf(x)
    conf = tmp_path / "auto.yaml"
    conf.write_text("attack:\n  name: replace\n  then: auto\n")
    _, t, settings = _replaced("replace", clf, x, logits, 0, conf)
    assert settings["then"] == "auto" and settings["then_config"]["name"] == "advgan"
    assert t is not None and len(t) == 4
    _, _, default = _replaced("replace", clf, x, logits, 0, None)
    assert default["then"] == "ifgsm" and default["then_config"]["name"] == "ifgsm"
    _, none, only = _replaced("replace-only", clf, x, logits, 0, conf)
    assert none is None and only["then"] is None


def test_no_one_asks_whether_generated_faces_come_closer_than_real_outsiders() -> None:
    """The lower tail: generated faces that sit near a training identity more often than
    real outsiders do are flagged; a distribution that is only narrower at the far end is
    not."""
    from deid.eval.replace import _lower_tail

    rng = np.random.default_rng(0)
    real = rng.normal(0.56, 0.05, 400)
    copies = np.concatenate([rng.normal(0.40, 0.02, 60), rng.normal(0.56, 0.05, 340)])
    narrow = np.clip(rng.normal(0.56, 0.05, 400), 0.52, 0.60)  # no close ones, no far ones
    flagged = _lower_tail(copies, real)
    assert all(r["fisher_generated_more_p"] < 1e-6 for r in flagged)
    assert flagged[0]["generated_share"] > 2 * flagged[0]["real_share"]
    assert all(r["fisher_generated_more_p"] > 0.5 for r in _lower_tail(narrow, real))
