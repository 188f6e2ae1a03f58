"""``deid eval replace``: how much of a face must be replaced, whether the generated faces are
no one, and how natural they look, measured with the independent judge.

Three studies on held-out CelebA faces (64 px, the judge's own calibration says it is sure
of itself there: 97% verification accuracy):

* **regions**: a perfect replacement (another real person's aligned face, pasted with the
  generator's soft elliptical mask of several sizes, and the whole crop) against the
  original; the share the judge can no longer link. It tells how far out the generated
  region must reach, whatever the generator.
* **generator**: ``replace`` without its targeted attack: unlinkable share against the
  original; two latents on one face (two tracks of one person): the share of pairs the
  judge calls different people; the same latent twice: identical.
* **no one**: nearest-training-identity distances (gallery: the generator's own training
  faces) of generated faces, against those of real faces of the identities held out of
  the generator's training. A generator that copied training faces would give smaller
  distances than real unseen people do.
* **realism**: a Fréchet distance between real held-out faces and processed ones, on the
  penultimate features of deid's CelebA CNN, in their top 32 principal directions (FID's
  recipe with deid's own network instead of Inception, which is not installed here; read it
  as a ranking of modes, not as FID).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from scipy import linalg, stats

from deid import __version__
from deid.attacks.base import from_uint8, to_uint8
from deid.data import load_dataset
from deid.eval.heldout import detected, utility_detector
from deid.eval.privacy import obscured, require_judge
from deid.generators.facegan import FaceGenerator, ellipse_mask
from deid.generators.replace import SHIPPED, ReplaceConfig, ReplaceFaces
from deid.generators.train_facegan import holdout_split
from deid.models import load_classifier

RADII = (0.12, 0.18, 0.24, 0.30, 0.36, 0.42, 0.46, 0.52)


def _lower_tail(gen: np.ndarray, real: np.ndarray) -> list[dict[str, float]]:
    """What "no one" is about: does a generated face come closer to a training identity than
    real outsiders do? Per percentile of the outsiders' distances (5, 10), the share of
    generated and of real faces under it, and Fisher's one-sided p that generated faces are
    there more often (a whole-distribution test also answers for the far tail, which says
    nothing about copying)."""
    rows = []
    for q in (5, 10):
        thr = float(np.percentile(real, q))
        g, r = int((gen < thr).sum()), int((real < thr).sum())
        p = stats.fisher_exact([[g, len(gen) - g], [r, len(real) - r]], alternative="greater")
        rows.append(
            {
                "percentile_of_real": q,
                "distance": round(thr, 3),
                "generated_share": round(g / len(gen), 4),
                "real_share": round(r / len(real), 4),
                "fisher_generated_more_p": float(p.pvalue),
            }
        )
    return rows


def _quantiles(d: np.ndarray) -> dict[str, float]:
    return {
        "p5": round(float(np.percentile(d, 5)), 3),
        "median": round(float(np.median(d)), 3),
        "p95": round(float(np.percentile(d, 95)), 3),
        "under_0.6": round(float((d < 0.6).mean()), 4),
    }


def frechet(a: np.ndarray, b: np.ndarray, dims: int = 32) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula), in the
    top ``dims`` principal directions of ``a`` (with a few hundred faces, a covariance of
    all 256 features would be singular)."""
    k = max(1, min(dims, len(a) // 4, a.shape[1]))
    mu = a.mean(0)
    _, _, vt = np.linalg.svd(a - mu, full_matrices=False)
    pa, pb = (a - mu) @ vt[:k].T, (b - mu) @ vt[:k].T
    mu1, mu2 = pa.mean(0), pb.mean(0)
    s1 = np.atleast_2d(np.cov(pa, rowvar=False))
    s2 = np.atleast_2d(np.cov(pb, rowvar=False))
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def replace_table(
    n: int = 200,
    generator: str | None = None,
    data: Any = None,
    seed: int = 0,
    gallery_per_id: int = 5,
    progress: Any = None,
) -> dict[str, Any]:
    """The four studies (see the module's doc): ``n`` faces per study; the no-one gallery
    holds ``gallery_per_id`` training faces of every identity the generator trained on."""
    say = progress or (lambda _s: None)
    j = require_judge()
    gen = FaceGenerator.load(generator or SHIPPED)
    meta = gen.meta
    ds = load_dataset("celeba", data)
    _, held = holdout_split(
        ds,
        len(meta.data.get("holdout_identities", [])) or 25,
        int(meta.data.get("holdout_seed", 0)),
    )
    held = np.asarray(meta.data.get("holdout_identities", held))
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()

    # faces of identities the generator trained on (held-out images) and of unseen identities
    test = ds.test[~np.isin(ds.labels[ds.test], held)]
    probe = np.sort(rng.permutation(test)[:n])
    x8 = ds.images[probe]
    lab = ds.labels[probe]
    clean = j.descriptors(x8)
    say(f"{len(probe)} held-out faces described ({time.perf_counter() - t0:.0f} s)")

    # -- regions: another real person pasted in
    donors = np.array([rng.choice(probe[lab != lab[i]]) for i in range(len(probe))])
    xd = from_uint8(ds.images[donors])
    x = from_uint8(x8)
    regions = []
    for r in (*RADII, None):
        if r is None:
            mixed = xd
            name = "whole crop"
        else:
            reg = (meta.region[0], meta.region[1], r * meta.region[2] / meta.region[3], r)
            m = ellipse_mask(len(x), meta.size, reg, meta.feather)
            mixed = m * xd + (1 - m) * x
            name = f"ellipse ry={r:.2f} rx={reg[2]:.2f}"
        d = np.linalg.norm(j.descriptors(to_uint8(mixed)) - clean, axis=1)
        regions.append(
            {
                "region": name,
                "radius_y": r,
                "unlinkable": round(float((d >= j.threshold).mean()), 4),
                "median_distance": round(float(np.median(d)), 3),
            }
        )
        say(f"regions: {name}: {regions[-1]['unlinkable']:.0%} unlinkable")

    # -- the generator: one latent per face, then a second latent (another track)
    rep = ReplaceFaces(ReplaceConfig(then=None, generator=generator))
    nan = torch.full((len(x), 5, 2), float("nan"))
    ids = torch.arange(len(x))
    t1 = time.perf_counter()
    g1 = to_uint8(rep.generate(x, nan, ids))
    s_face = (time.perf_counter() - t1) / len(x)
    g1b = to_uint8(rep.generate(x, nan, ids))
    g2 = to_uint8(rep.generate(x, nan, ids + 10_000))
    d1 = j.descriptors(g1)
    d2 = j.descriptors(g2)
    mtcnn = utility_detector("cpu")
    found = detected(mtcnn, from_uint8(g1))
    found_clean = detected(mtcnn, x)
    # the judge's own rate for two different real people at this size: the ceiling
    other = lab[:, None] != lab[None]
    pair_d = np.linalg.norm(clean[:, None] - clean[None], axis=2)[np.triu(other, 1)]
    vs_orig = np.linalg.norm(d1 - clean, axis=1)
    two_tracks = np.linalg.norm(d1 - d2, axis=1)
    gen_row = {
        "unlinkable": round(float((vs_orig >= j.threshold).mean()), 4),
        "distance_to_original": _quantiles(vs_orig),
        "two_latents_apart": round(float((two_tracks >= j.threshold).mean()), 4),
        "two_latents_distance": _quantiles(two_tracks),
        "same_latent_identical": bool(np.array_equal(g1, g1b)),
        "mtcnn_finds": round(float(found.mean()), 4),
        "mtcnn_finds_clean": round(float(found_clean.mean()), 4),
        "different_real_people_apart": round(float((pair_d >= j.threshold).mean()), 4),
        "s_per_face": round(s_face, 4),
    }
    say(f"generator: {gen_row['unlinkable']:.0%} unlinkable ({time.perf_counter() - t0:.0f} s)")

    # -- no one: nearest training identity, generated vs real unseen people
    train_idx, _ = holdout_split(ds, len(held), int(meta.data.get("holdout_seed", 0)))
    per_id = [
        rng.permutation(train_idx[ds.labels[train_idx] == k])[:gallery_per_id]
        for k in np.unique(ds.labels[train_idx])
    ]
    gallery = np.sort(np.concatenate(per_id))
    g_desc = j.descriptors(ds.images[gallery])
    unseen = np.flatnonzero(np.isin(ds.labels, held))
    unseen = np.sort(rng.permutation(unseen)[:n])
    u8 = ds.images[unseen]
    u_desc = j.descriptors(u8)
    gu = to_uint8(
        rep.generate(
            from_uint8(u8),
            torch.full((len(u8), 5, 2), float("nan")),
            torch.arange(len(u8)) + 20_000,
        )
    )
    gu_desc = j.descriptors(gu)

    def nearest(desc: np.ndarray) -> np.ndarray:
        return np.linalg.norm(desc[:, None] - g_desc[None], axis=2).min(1)

    near_real, near_gen = nearest(u_desc), nearest(gu_desc)
    # one-sided: are generated faces closer to the training identities than real outsiders?
    mw = stats.mannwhitneyu(near_gen, near_real, alternative="less")
    ks = stats.ks_2samp(near_gen, near_real)
    no_one = {
        "gallery": f"{len(gallery)} training faces of the generator ({gallery_per_id} per "
        "identity, "
        f"{len(per_id)} identities)",
        "real_unseen_people": _quantiles(near_real),
        "generated_on_unseen_contexts": _quantiles(near_gen),
        "mann_whitney_generated_closer_p": float(mw.pvalue),
        "ks_two_sample": {"statistic": round(float(ks.statistic), 4), "p": float(ks.pvalue)},
        "close_to_a_training_identity": _lower_tail(near_gen, near_real),
        "n": len(unseen),
    }
    say(f"no one: ({time.perf_counter() - t0:.0f} s)")

    # -- realism: Fréchet distance on deid's own CNN features
    clf = load_classifier("celeba-cnn")
    with torch.no_grad():

        def feats(a8: np.ndarray) -> np.ndarray:
            return clf.embed(from_uint8(a8)).numpy()

        real_ref = feats(ds.images[np.sort(rng.permutation(test)[:n])])
        realism = {
            "none (clean)": round(frechet(real_ref, feats(x8)), 2),
            "replace (no attack)": round(frechet(real_ref, feats(g1)), 2),
            "pixelate": round(frechet(real_ref, feats(obscured(x8, "pixelate"))), 2),
            "blur": round(frechet(real_ref, feats(obscured(x8, "blur"))), 2),
            "another real person (whole crop)": round(
                frechet(real_ref, feats(ds.images[donors])), 2
            ),
        }
    return {
        "kind": "eval-replace",
        "deid_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generator": str(generator or SHIPPED),
        "region": list(meta.region),
        "n": len(probe),
        "seed": seed,
        "threshold": j.threshold,
        "regions": regions,
        "generator_row": gen_row,
        "no_one": no_one,
        "realism_frechet": realism,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def format_replace(t: dict[str, Any]) -> str:
    """Markdown tables of :func:`replace_table`."""
    lines = [
        f"n = {t['n']} held-out CelebA faces (64 px), seed {t['seed']}, "
        f"judge threshold {t['threshold']}",
        "",
        "| replaced region (another real person pasted in) | judge: unlinkable | median distance |",
        "|---|--:|--:|",
    ]
    for r in t["regions"]:
        lines.append(f"| {r['region']} | {r['unlinkable']:.0%} | {r['median_distance']:.2f} |")
    g = t["generator_row"]
    dq = g["distance_to_original"]
    lines += [
        "",
        "| generator (replace, no attack) | value |",
        "|---|--:|",
        f"| unlinkable from the original | {g['unlinkable']:.0%} |",
        f"| distance to the original: p5 / median | {dq['p5']:.2f} / {dq['median']:.2f} |",
        f"| two latents on one face: judged different people | {g['two_latents_apart']:.0%} |",
        f"| same latent twice: identical | {g['same_latent_identical']} |",
        f"| MTCNN finds a face (clean: {g['mtcnn_finds_clean']:.0%}) | {g['mtcnn_finds']:.0%} |",
        "| the judge's rate for two different real people (the ceiling) | "
        f"{g['different_real_people_apart']:.0%} |",
        f"| s per face | {g['s_per_face']:.4f} |",
    ]
    no = t["no_one"]
    lines += [
        "",
        f"Nearest training identity ({no['gallery']}), n = {no['n']}:",
        "",
        "| faces | p5 | median | p95 | under 0.6 |",
        "|---|--:|--:|--:|--:|",
    ]
    for k in ("real_unseen_people", "generated_on_unseen_contexts"):
        q = no[k]
        lines.append(
            f"| {k.replace('_', ' ')} | {q['p5']:.2f} | {q['median']:.2f} | {q['p95']:.2f} "
            f"| {q['under_0.6']:.0%} |"
        )
    lines += [
        "",
        "Generated closer to the training identities than real outsiders? Mann-Whitney "
        f"(one-sided) p = {no['mann_whitney_generated_closer_p']:.3g}; two-sample KS D = "
        f"{no['ks_two_sample']['statistic']:.3f}, p = {no['ks_two_sample']['p']:.3g}.",
        "",
        "| under real outsiders' | distance | generated | real | Fisher p (generated more often) |",
        "|---|--:|--:|--:|--:|",
    ]
    for r in no["close_to_a_training_identity"]:
        lines.append(
            f"| {r['percentile_of_real']}th percentile | {r['distance']:.3f} | "
            f"{r['generated_share']:.1%} | {r['real_share']:.1%} | "
            f"{r['fisher_generated_more_p']:.3g} |"
        )
    lines += [
        "",
        "| Fréchet distance to real held-out faces (deid CNN features) | value |",
        "|---|--:|",
    ]
    for k, v in t["realism_frechet"].items():
        lines.append(f"| {k} | {v:.1f} |")
    return "\n".join(lines)
