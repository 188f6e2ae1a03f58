"""``deid run``: de-identify a video, an image or a folder, and write the output's report.

:func:`run` checks the paths (nothing is written for a refused run), loads the models (unless
given them), hands the input to the video job (:mod:`deid.pipeline.video`) or the image
driver (:mod:`deid.pipeline.image`), draws the contact sheet if asked, and writes the report
with :func:`deid.pipeline.report.write_report`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from deid.config import Settings
from deid.errors import PartialFailure
from deid.io import check_run, check_video, writing
from deid.pipeline.image import image_run
from deid.pipeline.report import RunReport, write_report
from deid.pipeline.resources import Resources
from deid.pipeline.verify import check_judge
from deid.pipeline.video import run_video


def run(
    input: Path | str,
    output: Path | str,
    settings: Settings,
    progress: bool = True,
    resources: Resources | None = None,
    contact_sheet: Path | None = None,
    show_originals: bool = False,
) -> dict[str, Any]:
    """De-identify a video, an image or a folder of images; write the output and its report.

    Args:
        contact_sheet: also write a PNG of the faces before and after (the *before* tiles
            pixelated, so the sheet holds no face clearer than the output).
        show_originals: the contact sheet's *before* tiles are the clear original faces (the
            sheet says so in its title and PNG metadata).

    Returns:
        the report (the JSON form of :class:`deid.pipeline.report.RunReport`, as written).

    Raises:
        JudgeMissingError: ``--strict`` (or ``pipeline.judge: on``) without the judge's
            extra, before anything is read or written.
        InputError, OutputError, ConfigError: before anything is written (see
            :func:`deid.io.check_run`; a video that is not decodable or whose frames share
            timestamps: before the models load).
        PartialFailure: some images of a folder failed (the rest, and the report, are written).
        StepFailed: a step failed unexpectedly (the message names it; nothing half-written
            stays at the output).
    """
    input, output = Path(input), Path(output)
    kind = check_run(input, output, contact_sheet)
    check_judge(settings)  # strict privacy without the judge: refused before any work
    if kind == "video" and resources is None:
        check_video(input)  # a video no job can be made of is refused before the models load
    res = resources or Resources.load(settings)
    t0 = time.perf_counter()
    thumbs: list[dict[str, Any]] = []
    if kind == "video":
        report = RunReport.of(run_video(input, output, res, progress=progress, thumbnails=thumbs))
    else:
        report, thumbs = image_run(input, output, res, progress)
    total = round(time.perf_counter() - t0, 3)
    report.seconds["total"] = total
    report.fps = round(report.totals.frames / total, 3) if total else None
    if contact_sheet is not None:
        from deid.report import contact_sheet as make_sheet

        with writing(Path(contact_sheet), "contact sheet"):
            make_sheet(
                thumbs,
                contact_sheet,
                title=f"{input.name}: {res.settings.attack.name}, {res.settings.classifier.name}",
                show_originals=show_originals,
            )
    write_report(output, report)
    if report.failed_inputs:
        raise PartialFailure([(f.file, f.error) for f in report.failed_inputs])
    return report.wire()
