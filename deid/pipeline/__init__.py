"""The de-identification pipeline: decode, detect, crop, classify, protect, paste back,
encode, verify, repair.

Where each part lives:

* :mod:`~deid.pipeline.resources`: what a process loads once (:class:`Resources`: detector,
  classifier, protection step), :func:`resolve_device`, :func:`resolve_target`;
* :mod:`~deid.pipeline.stages`: the stage functions (detect, crop, classify, attack_faces);
* :mod:`~deid.pipeline.protect`: the protection step by name: attacks and generators
  (:class:`Protector`, :class:`Generator`, :func:`register_generator`);
* :mod:`~deid.pipeline.verify`: verification and repair on the written file, and the
  independent judge's figures on it (strict privacy repairs the faces it links);
* :mod:`~deid.pipeline.steps`: running an ordered list of named steps (:class:`StepFailed`);
* :mod:`~deid.pipeline.image`: the image driver (:data:`~deid.pipeline.image.IMAGE_STEPS`);
* :mod:`~deid.pipeline.video`: the video job (:data:`~deid.pipeline.video.VIDEO_STEPS`:
  split, analyse, plan, render, assemble), which the service runs as tasks;
* :mod:`~deid.pipeline.tracking`: offline tracking for the video plan;
* :mod:`~deid.pipeline.report`: the artefacts and the report as pydantic models, and
  :func:`write_report`;
* :mod:`~deid.pipeline.driver`: :func:`run` (``deid run``).
"""

from deid.generators.base import (
    GENERATORS,
    Generator,
    GeneratorConfig,
    register_generator,
    unregister_generator,
)
from deid.io import report_path
from deid.pipeline.driver import run
from deid.pipeline.image import (
    IMAGE_STEPS,
    StreamState,
    image_run,
    new_state,
    process_frames,
    process_image,
    run_images,
)
from deid.pipeline.protect import (
    AttackProtector,
    GeneratorProtector,
    ProtectContext,
    Protector,
    build_protector,
)
from deid.pipeline.report import (
    Analysis,
    Chunk,
    ChunkReport,
    FaceJudge,
    FaceRecord,
    JudgeSummary,
    JudgeTotals,
    Layout,
    Plan,
    RunReport,
    face_totals,
    judge_totals,
    write_report,
)
from deid.pipeline.resources import Resources, resolve_device, resolve_target
from deid.pipeline.stages import (
    FaceOutcome,
    GreyInput,
    TargetMemory,
    attack_faces,
    classify,
    crop,
    detect,
    iou,
    to_batch,
)
from deid.pipeline.steps import Step, StepFailed, Timer, run_steps
from deid.pipeline.verify import (
    check_judge,
    detect_around,
    judge_status,
    needs_repair,
    record_crop,
    region_pixels,
    repair_frames,
    verify_frames,
)
from deid.pipeline.video import VIDEO_STEPS, run_video

__all__ = [
    "GENERATORS",
    "IMAGE_STEPS",
    "VIDEO_STEPS",
    "Analysis",
    "AttackProtector",
    "Chunk",
    "ChunkReport",
    "FaceJudge",
    "FaceOutcome",
    "FaceRecord",
    "Generator",
    "GeneratorConfig",
    "GeneratorProtector",
    "GreyInput",
    "JudgeSummary",
    "JudgeTotals",
    "Layout",
    "Plan",
    "ProtectContext",
    "Protector",
    "Resources",
    "RunReport",
    "Step",
    "StepFailed",
    "StreamState",
    "TargetMemory",
    "Timer",
    "attack_faces",
    "build_protector",
    "check_judge",
    "classify",
    "crop",
    "detect",
    "detect_around",
    "face_totals",
    "image_run",
    "iou",
    "judge_status",
    "judge_totals",
    "needs_repair",
    "new_state",
    "process_frames",
    "process_image",
    "record_crop",
    "region_pixels",
    "register_generator",
    "repair_frames",
    "report_path",
    "resolve_device",
    "resolve_target",
    "run",
    "run_images",
    "run_steps",
    "run_video",
    "to_batch",
    "unregister_generator",
    "verify_frames",
    "write_report",
]
