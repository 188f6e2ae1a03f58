"""Reading and writing videos and images, input classification and output-path checks."""

from deid.io.images import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    check_output,
    classify_input,
    list_images,
    read_image,
    write_image,
)
from deid.io.paths import tmp_beside
from deid.io.video import (
    REPRODUCIBLE_X264,
    WRITABLE_VIDEO_FORMATS,
    FrameTable,
    VideoInfo,
    VideoWriter,
    check_video,
    concat_videos,
    frame_table,
    iter_batches,
    probe_video,
    read_frames,
    read_range,
    to_rate,
    write_video,
)

__all__ = [
    "IMAGE_EXTS",
    "REPRODUCIBLE_X264",
    "VIDEO_EXTS",
    "WRITABLE_VIDEO_FORMATS",
    "FrameTable",
    "VideoInfo",
    "VideoWriter",
    "check_output",
    "check_video",
    "classify_input",
    "concat_videos",
    "frame_table",
    "iter_batches",
    "list_images",
    "probe_video",
    "read_frames",
    "read_image",
    "read_range",
    "tmp_beside",
    "to_rate",
    "write_image",
    "write_video",
]
