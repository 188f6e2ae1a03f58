"""``deid report REPORT.json -o DIR``: an HTML page with PNG figures beside it.

Two kinds of report are understood:

* a ``deid eval dataset`` JSON (``"kind": "eval-dataset"``): the figures table, a contact
  sheet (example faces before and after at every eps), success vs eps, norm histograms and
  the identity confusion;
* a ``deid run`` report (``out.report.json``): totals, a contact sheet rebuilt from the
  input and output files (when they can still be read), the per-frame coverage, the track
  table, failed inputs and the first faces. Tracking fields (``tracks``, per-frame coverage)
  are rendered when present; without them both are derived from ``faces_detail``.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from deid.errors import DeidError, InputError

log = logging.getLogger(__name__)

#: The contact sheet's file name in the report folder: ``contact.png`` holds pixelated
#: originals, ``contact.originals.png`` (``--show-originals``) the clear ones.
SHEETS = {False: "contact.png", True: "contact.originals.png"}
CLEAR_NOTE = (
    "<p class='warn'>This page shows <b>clear original faces</b> (--show-originals): they "
    "are not de-identified. Do not share it.</p>"
)
PIXELATED_NOTE = (
    "<p class='note'>Before: the original faces, pixelated (deid report --show-originals "
    "shows them unobscured).</p>"
)

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto;
       max-width: 1280px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta { color: #666; font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .55rem; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr.bad td { background: #fff1ec; }
img { max-width: 100%; border: 1px solid #eee; margin: .4rem 0; }
.note { color: #777; font-style: italic; }
.warn { color: #b00; border: 2px solid #b00; padding: .4rem .6rem; }
.kpi { display: inline-block; margin: .3rem 1.2rem .3rem 0; }
.kpi b { display: block; font-size: 1.3rem; }
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if kind == "%":
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(a) for a in v)
    return str(v)


def _table(
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str, str]],
    bad: Any = None,
    limit: int | None = None,
) -> str:
    """HTML table; ``columns`` are (key, header, format); ``bad(row)`` highlights a row."""
    head = "".join(f"<th class='{'l' if f == 'l' else ''}'>{_e(h)}</th>" for _, h, f in columns)
    body = []
    for r in rows[:limit] if limit else rows:
        cls = " class='bad'" if bad and bad(r) else ""
        cells = "".join(
            f"<td class='{'l' if f == 'l' else ''}'>{_e(_fmt(r.get(k), f))}</td>"
            for k, _, f in columns
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    more = ""
    if limit and len(rows) > limit:
        more = f"<p class='note'>first {limit} of {len(rows)} rows</p>"
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


def _page(title: str, body: str, show_originals: bool = False) -> str:
    if show_originals:
        title, body = f"[clear faces] {title}", CLEAR_NOTE + body
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def _img(name: str, alt: str) -> str:
    return f"<img src='{_e(name)}' alt='{_e(alt)}'>"


def _write(path: Path, text: str) -> None:
    from deid.io import write_text

    write_text(path, text, "HTML report")


# --------------------------------------------------------------------------------------------
# eval dataset
# --------------------------------------------------------------------------------------------
#: The figures table of an eval page: (row key, header, format).
EVAL_COLUMNS = [
    ("eps", "eps", "l"),
    ("success", "targeted success", "%"),
    ("original_recognised", "true id recognised", "%"),
    ("original_kept", "of those recognised before", "%"),
    ("l0", "L0 (share)", "%"),
    ("l1", "mean L1", ""),
    ("l2", "mean L2", ""),
    ("linf", "mean Linf (/255)", ""),
    ("psnr", "mean PSNR (dB)", ""),
    ("psnr_min", "min PSNR", ""),
    ("ssim", "mean SSIM", ""),
    ("detected", "MTCNN finds", "%"),
    ("detection_kept", "MTCNN still finds", "%"),
    ("steps", "mean steps", ""),
    ("seconds", "seconds", ""),
]


def _eval_row(r: dict[str, Any]) -> dict[str, Any]:
    """One eps row of an eval report as the figures table shows it (Linf in /255)."""
    linf = r["norms"]["linf"]["mean"]
    return {
        "eps": f"{r['eps_255']:g}/255" if r.get("eps") is not None else "-",
        "success": r["success"],
        "original_recognised": r["original_recognised"],
        "original_kept": r.get("original_kept"),
        "l0": r["l0_fraction"]["mean"],
        "l1": r["norms"]["l1"]["mean"],
        "l2": r["norms"]["l2"]["mean"],
        "linf": None if linf is None else linf * 255,
        "psnr": r["psnr"]["mean"],
        "psnr_min": r["psnr"]["min"],
        "ssim": r["ssim"]["mean"],
        "detected": r.get("detected"),
        "detection_kept": r.get("detection_kept"),
        "steps": r["mean_steps"],
        "seconds": r["seconds"],
    }


def render_eval(rep: dict[str, Any], out: Path, show_originals: bool = False) -> Path:
    """A ``deid eval dataset`` report's page: the figures table, the contact sheet, success
    vs eps, the norm histograms and the identity confusion."""
    from deid.report import plots
    from deid.report.contact import eval_sheet

    sheet_name = SHEETS[show_originals]
    eval_sheet(rep, out / sheet_name, show_originals=show_originals)
    plots.success_vs_eps(rep, out / "success_vs_eps.png")
    plots.norm_histograms(rep, out / "norms.png")
    plots.confusion(rep, out / "confusion.png")
    c = rep["clean"]
    rows = [_eval_row(r) for r in rep["rows"]]
    title = f"deid eval: {rep['attack']} vs {rep['classifier']} on {rep['dataset']}"
    det = (
        f"<span class='kpi'>MTCNN finds (clean)<b>{_fmt(c.get('detected'), '%')}</b></span>"
        if c.get("detected") is not None
        else ""
    )
    body = f"""
<h1>{_e(title)}</h1>
<p class='meta'>{_e(rep["n"])} held-out faces (seed {_e(rep["seed"])}), target
{_e(rep["target_mode"])}, device {_e(rep["device"])}, deid {_e(rep["deid_version"])},
{_e(rep["created"])}. Success and recognition are measured after rounding to 8-bit pixels;
norms are in [0, 1] pixel units; detection runs MTCNN on each crop placed in a mid-grey frame
with a {_e(rep.get("detect_margin"))} margin.</p>
<span class='kpi'>clean top-1<b>{_fmt(c["top1"], "%")}</b></span>
<span class='kpi'>clean mean confidence<b>{_fmt(c["mean_conf"])}</b></span>{det}
<h2>Figures</h2>
{_table(rows, EVAL_COLUMNS)}
<h2>Faces before and after</h2>
{CLEAR_NOTE if show_originals else PIXELATED_NOTE}
{_img(sheet_name, "contact sheet")}
<h2>Success vs eps</h2>
{_img("success_vs_eps.png", "success vs eps")}
<h2>Perturbation norms and quality</h2>
{_img("norms.png", "norm histograms")}
<h2>Identity confusion</h2>
{_img("confusion.png", "confusion")}
"""
    index = out / "index.html"
    _write(index, _page(title, body, show_originals))
    return index


# --------------------------------------------------------------------------------------------
# run reports
# --------------------------------------------------------------------------------------------
def _locate(path: str, report_dir: Path) -> Path | None:
    p = Path(path)
    for cand in (p, report_dir / p, report_dir / p.name):
        if cand.exists():
            return cand
    return None


def _pick_faces(faces: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Up to ``k`` faces spread over tracks and time: each track's middle face first."""
    by_track: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for f in faces:
        by_track[(f.get("file"), f.get("track", -1))].append(f)
    picked = [v[len(v) // 2] for v in by_track.values()]
    if len(picked) < k:
        seen = {id(f) for f in picked}
        rest = [f for f in faces if id(f) not in seen]
        step = max(1, len(rest) // max(1, k - len(picked)))
        picked += rest[::step][: k - len(picked)]
    picked = picked[:k]
    return sorted(picked, key=lambda f: (str(f.get("file", "")), f["frame"]))


def _crop(img: np.ndarray, region: list[int]) -> np.ndarray:
    x1, y1, x2, y2 = region
    return img[y1:y2, x1:x2].copy()


def rebuild_thumbnails(rep: dict[str, Any], report_dir: Path, k: int = 16) -> list[dict[str, Any]]:
    """Faces before (from the input) and after (from the output) for a run report's contact
    sheet. Raises :class:`InputError` when the input or output cannot be read any more."""
    from deid.io import read_frames, read_image_pages

    faces = [f for f in rep.get("faces_detail", []) if f.get("region")]
    if not faces:
        return []
    picked = _pick_faces(faces, k)
    src = _locate(rep["input"], report_dir)
    dst = _locate(rep["output"], report_dir)
    if src is None or dst is None:
        missing = rep["input"] if src is None else rep["output"]
        raise InputError(missing, "not found; the contact sheet needs the run's input and output")
    out = []
    if rep["kind"] == "video":
        wanted = {f["frame"] for f in picked}
        last = max(wanted)
        before: dict[int, np.ndarray] = {}
        after: dict[int, np.ndarray] = {}
        for store, path in ((before, src), (after, dst)):
            for i, frame in enumerate(read_frames(path, upright=True)):
                if i in wanted:
                    store[i] = frame
                if i >= last:
                    break
        for f in picked:
            if f["frame"] in before and f["frame"] in after:
                b, a = before[f["frame"]], after[f["frame"]]
                out.append({**f, "before": _crop(b, f["region"]), "after": _crop(a, f["region"])})
        return out
    cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for f in picked:
        if rep["kind"] == "folder":
            fin = Path(f["file"])
            fin = fin if fin.exists() else src / fin.name
            try:
                fout = dst / fin.relative_to(src)
            except ValueError:
                fout = dst / fin.name
        else:
            fin, fout = src, dst
        key = (str(fin), int(f.get("page") or 0))
        if key not in cache:
            page = key[1]
            cache[key] = (read_image_pages(fin)[0][page], read_image_pages(fout)[0][page])
        b, a = cache[key]
        out.append({**f, "before": _crop(b, f["region"]), "after": _crop(a, f["region"])})
    return out


def _category(action: str) -> str:
    if action == "attacked":
        return "de-identified"
    if action.startswith("repaired"):
        return "repaired"
    return "obscured"


def _per_frame_from_report(rep: dict[str, Any]) -> dict[str, list[float]]:
    """Per-frame series the pipeline wrote: ``coverage`` as columns (``{"faces": [...],
    "protected": [...]}``) or as rows (``[{"frame": 0, "faces": 3, ...}, ...]``)."""
    out: dict[str, list[float]] = {}
    for key in ("coverage", "per_frame"):
        v = rep.get(key)
        if isinstance(v, dict):
            for name, col in v.items():
                if isinstance(col, list) and all(
                    isinstance(a, (int, float)) and not isinstance(a, bool) for a in col
                ):
                    out[name] = [float(a) for a in col]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            names = [
                k
                for k, a in v[0].items()
                if k != "frame" and isinstance(a, (int, float)) and not isinstance(a, bool)
            ]
            n = max(int(r.get("frame", i)) for i, r in enumerate(v)) + 1
            for name in names:
                col = [0.0] * n
                for i, r in enumerate(v):
                    if isinstance(r.get(name), (int, float)):
                        col[int(r.get("frame", i))] = float(r[name])
                out[name] = col
        if out:
            break
    if "faces" in out and "protected" in out and len(out["faces"]) == len(out["protected"]):
        out["unprotected"] = [f - p for f, p in zip(out["faces"], out["protected"], strict=True)]
    return out


def coverage_series(rep: dict[str, Any]) -> tuple[list[int], dict[str, list[float]], list[str]]:
    """(frames, named per-frame series, which of them are stacked) for the coverage plot."""
    n = int(rep.get("totals", {}).get("frames") or 0)
    faces = rep.get("faces_detail", [])
    if faces:
        n = max(n, max(f["frame"] for f in faces) + 1)
    frames = list(range(n))
    series: dict[str, list[float]] = {}
    cats = ["de-identified", "obscured", "repaired"]
    counts = {c: [0.0] * n for c in cats}
    for f in faces:
        counts[_category(str(f.get("action", "")))][f["frame"]] += 1
    stacked = [c for c in cats if any(counts[c])]
    series.update({c: counts[c] for c in stacked})
    kinds = {f.get("kind") for f in faces} - {None, "detected"}
    for kind in sorted(kinds):
        series[f"{kind} (not detected)"] = [0.0] * n
        for f in faces:
            if f.get("kind") == kind:
                series[f"{kind} (not detected)"][f["frame"]] += 1
    for name, col in _per_frame_from_report(rep).items():
        series[name] = (col + [0.0] * n)[:n]
    return frames, series, stacked


def track_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's ``tracks`` when present, else per-track summaries from ``faces_detail``."""
    tracks = rep.get("tracks")
    if isinstance(tracks, list) and tracks and isinstance(tracks[0], dict):
        return tracks
    by: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for f in rep.get("faces_detail", []):
        by[f.get("track", -1)].append(f)
    rows = []
    for tid, fs in sorted(by.items(), key=lambda kv: (kv[0] is None, kv[0])):
        targets = sorted({str(f.get("target")) for f in fs})
        rows.append(
            {
                "id": tid,
                "first": min(f["frame"] for f in fs),
                "last": max(f["frame"] for f in fs),
                "faces": len(fs),
                "de-identified": sum(f.get("action") == "attacked" for f in fs),
                "obscured": sum(f.get("action") != "attacked" for f in fs),
                "pred": sorted({str(f.get("pred")) for f in fs}),
                "target": targets,
                "target_changes": len(targets) - 1,
            }
        )
    return rows


def _track_flicker(r: dict[str, Any]) -> bool:
    """A track whose target identity changed (the report's own field, or its targets)."""
    used = r.get("targets_used")
    return (r.get("target_changes") or 0) > 0 or (isinstance(used, list) and len(used) > 1)


#: The headline figures of a run page: (totals key, label, format).
RUN_KPIS = [
    ("frames", "frames", ""),
    ("faces", "faces", ""),
    ("attack_success_rate", "attack success", "%"),
    ("verified_target_rate", "verified as target", "%"),
    ("verified_original_rate", "verified as original", "%"),
    ("unprotected_faces", "unprotected faces", ""),
]
#: The faces table of a run page: (``faces_detail`` key, header, format).
FACE_COLUMNS = [
    ("frame", "frame", ""),
    ("track", "track", ""),
    ("pred", "identity", "l"),
    ("pred_conf", "conf", ""),
    ("target", "target", "l"),
    ("final", "sees now", "l"),
    ("final_conf", "conf", ""),
    ("action", "action", "l"),
    ("steps", "steps", ""),
    ("linf", "Linf", ""),
    ("psnr", "PSNR (dB)", ""),
    ("judge_distance", "judge dist", ""),
    ("judge_linked", "judge links", ""),
]
#: The judge's figures of a run page: (``judge.totals`` key, label, format).
JUDGE_KPIS = [
    ("faces", "judged faces", ""),
    ("linked", "still linked", ""),
    ("unlinkable", "unlinkable", "%"),
    ("natural_unlinkable", "natural and unlinkable", "%"),
    ("linked_natural", "linked, left natural", ""),
]


def _judged_faces(faces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The faces with the judge's distance and verdict as columns of their own."""
    return [
        {**f, "judge_distance": j.get("distance"), "judge_linked": j.get("linked")}
        if isinstance(j := f.get("judge"), dict)
        else f
        for f in faces
    ]


def _flat_tracks(tracks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tracks with the judge's totals as columns (``judge_linked``, ``judge_unlinkable``)."""
    out = []
    for t in tracks:
        j = t.get("judge")
        t = {k: v for k, v in t.items() if k != "judge"}
        if isinstance(j, dict):
            t |= {"judge_linked": j.get("linked"), "judge_unlinkable": j.get("unlinkable")}
        out.append(t)
    return out


def _run_judge(rep: dict[str, Any]) -> str:
    """The independent judge's section of a run page: its figures, or why there are none."""
    j = rep.get("judge")
    if not isinstance(j, dict):
        return "<p class='note'>not judged (a report from before the judge)</p>"
    if j.get("status") != "judged":
        return f"<p class='note'>not judged: {_e(j.get('reason'))}</p>"
    t = j.get("totals") or {}
    kpis = "".join(
        f"<span class='kpi'>{_e(label)}<b>{_e(_fmt(t.get(key), f))}</b></span>"
        for key, label, f in JUDGE_KPIS
    )
    extra = [
        ("obscured because linked", j.get("repaired_judge_linked"), ""),
        ("s per face", j.get("seconds_per_face"), ""),
    ]
    kpis += "".join(
        f"<span class='kpi'>{_e(label)}<b>{_e(_fmt(v, f))}</b></span>" for label, v, f in extra
    )
    every = j.get("every") or 1
    which = (
        "each original face"
        if every == 1
        else f"a sample of the original faces (each track's first, then 1 in {_e(every)})"
    )
    return (
        f"<p class='meta'>{_e(j.get('name'))}, threshold {_e(j.get('threshold'))}, privacy "
        f"{_e(j.get('privacy'))}: the distance between {which} and the written "
        "one in the re-read output; linked: still the same person to it.</p>" + kpis
    )


def _run_kpis(totals: dict[str, Any]) -> str:
    return "".join(
        f"<span class='kpi'>{_e(label)}<b>{_e(_fmt(totals.get(key), f))}</b></span>"
        for key, label, f in RUN_KPIS
        if key in totals
    )


def _run_sheet(rep: dict[str, Any], out: Path, report_dir: Path, show_originals: bool) -> str:
    """Write the run's contact sheet, rebuilt from its input and output; its HTML, or a note
    saying why there is none."""
    from deid.report.contact import contact_sheet

    try:
        thumbs = rebuild_thumbnails(rep, report_dir)
        sheet_name = SHEETS[show_originals]
        contact_sheet(
            thumbs,
            out / sheet_name,
            title=f"{Path(rep['input']).name}: {rep.get('attack', {}).get('name', '')}, "
            f"{rep.get('classifier', {}).get('name', '')}",
            show_originals=show_originals,
        )
        return (CLEAR_NOTE if show_originals else PIXELATED_NOTE) + _img(
            sheet_name, "contact sheet"
        )
    except (DeidError, OSError, ValueError) as e:
        return f"<p class='note'>no contact sheet: {_e(e)}</p>"


def _run_coverage(rep: dict[str, Any], out: Path) -> str:
    """Write the per-frame coverage plot; its HTML, or a note when there are no faces."""
    from deid.report import plots

    frames, series, stacked = coverage_series(rep)
    if not (frames and series):
        return "<p class='note'>no faces</p>"
    t = rep.get("totals", {})
    plots.coverage(
        frames,
        series,
        out / "coverage.png",
        title=f"faces per frame ({t.get('frames', len(frames))} frames, "
        f"{t.get('faces', '?')} faces)",
        stacked=stacked,
    )
    return _img("coverage.png", "per-frame coverage")


def _run_tables(rep: dict[str, Any]) -> str:
    """The tracks, totals, video, seconds, failed inputs and faces sections of a run page."""
    tracks = _flat_tracks(track_rows(rep))
    track_cols = (
        [(k, k, "l" if k in ("pred", "target") else "") for k in tracks[0]] if tracks else []
    )
    totals = [{"what": k, "value": v} for k, v in rep.get("totals", {}).items()]
    video = rep.get("video") or {}
    seconds = rep.get("seconds", {})
    failed = rep.get("failed_inputs") or []
    return f"""<h2>Tracks</h2>
{
        _table(tracks, track_cols, bad=_track_flicker, limit=500)
        if tracks
        else "<p class='note'>no tracks</p>"
    }
<h2>Totals</h2>
{_table(totals, [("what", "", "l"), ("value", "", "")])}
{"<h2>Video</h2>" + _table([video], [(k, k, "") for k in video]) if video else ""}
<h2>Seconds per stage</h2>
{_table([seconds], [(k, k, "") for k in seconds]) if seconds else ""}
{
        "<h2>Failed inputs</h2>" + _table(failed, [("file", "file", "l"), ("error", "error", "l")])
        if failed
        else ""
    }
<h2>Faces</h2>
{
        _table(
            _judged_faces(rep.get("faces_detail", [])),
            FACE_COLUMNS,
            bad=lambda r: r.get("action") != "attacked" or bool(r.get("judge_linked")),
            limit=300,
        )
    }
"""


def render_run(
    rep: dict[str, Any], out: Path, report_dir: Path, show_originals: bool = False
) -> Path:
    """A ``deid run`` report's page: the headline figures, the contact sheet (rebuilt from
    the run's files in or beside ``report_dir``), the per-frame coverage and the tables."""
    title = f"deid run: {Path(rep.get('input', '?')).name}"
    body = f"""
<h1>{_e(title)}</h1>
<p class='meta'>{_e(rep.get("kind"))} {_e(rep.get("input"))} &rarr; {_e(rep.get("output"))};
classifier {_e(rep.get("classifier", {}).get("name"))}, attack
{_e(rep.get("attack", {}).get("name"))} (target {_e(rep.get("target_mode"))}), device
{_e(rep.get("device"))} (gradient passes in {_e(rep.get("gradient_precision", "float32"))}),
deid {_e(rep.get("deid_version"))}.</p>
{_run_kpis(rep.get("totals", {}))}
<h2>Independent judge</h2>
{_run_judge(rep)}
<h2>Faces before and after</h2>
{_run_sheet(rep, out, report_dir, show_originals)}
<h2>Per-frame coverage</h2>
{_run_coverage(rep, out)}
{_run_tables(rep)}"""
    index = out / "index.html"
    _write(index, _page(title, body, show_originals))
    return index


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------
def render(report: Path | str, out_dir: Path | str, show_originals: bool = False) -> Path:
    """Render a ``deid eval dataset`` JSON or a ``deid run`` report into ``out_dir``
    (``index.html`` and its PNGs); returns the HTML path.

    The contact sheet's original faces are pixelated (``contact.png``) unless
    ``show_originals`` (``contact.originals.png``, and the page says so); rendering without
    it removes a ``contact.originals.png`` an earlier rendering left in ``out_dir``.

    Raises:
        InputError: the file is missing, not JSON, or neither kind of report.
        OutputError: ``out_dir`` is a file, is or holds the report or the run's input or
            output, lies inside one of them, or cannot be written.
    """
    from deid.io import Artefact, check_writes, writing

    report, out = Path(report), Path(out_dir)
    if not report.is_file():
        raise InputError(report, "not found; expected a deid eval dataset or deid run JSON report")
    try:
        rep = json.loads(report.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(report, f"not a JSON report ({e})") from None
    if not isinstance(rep, dict):
        raise InputError(report, "expected a JSON object (a deid eval dataset or run report)")
    if rep.get("kind") == "eval-dataset":
        kind = "eval"
    elif "totals" in rep and "faces_detail" in rep:
        kind = "run"
    else:
        raise InputError(
            report,
            "neither a `deid eval dataset` report (kind: eval-dataset) nor a `deid run` report "
            "(totals, faces_detail)",
        )
    reads: list[tuple[str, Path | None]] = [("JSON report", report)]
    if kind == "run":  # the contact sheet is rebuilt from the run's files
        for role in ("input", "output"):
            where = rep.get(role)
            reads.append((role, _locate(where, report.parent) if isinstance(where, str) else None))
    check_writes(reads, [Artefact("HTML report", out, folder=True)])
    with writing(out, "HTML report"):
        out.mkdir(parents=True, exist_ok=True)
        if not show_originals:  # no clear faces left behind by an earlier --show-originals
            (out / SHEETS[True]).unlink(missing_ok=True)
    if kind == "eval":
        return render_eval(rep, out, show_originals)
    return render_run(rep, out, report.parent, show_originals)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``deid report REPORT.json -o DIR``."""
    p = sub.add_parser(
        "report",
        help="render a deid eval dataset or deid run JSON report as HTML with PNG figures",
    )
    p.add_argument(
        "report", type=Path, help="REPORT.json (deid eval dataset --json, or out.report.json)"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for index.html + PNGs")
    p.add_argument(
        "--show-originals",
        action="store_true",
        help="the contact sheet shows the clear original faces (contact.originals.png); "
        "by default they are pixelated",
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    import sys

    index = render(args.report, args.output, show_originals=args.show_originals)
    sys.stdout.write(f"{index}\n")
    return 0
