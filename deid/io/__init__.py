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
    WRITABLE_VIDEO_FORMATS,
    VideoInfo,
    VideoWriter,
    iter_batches,
    probe_video,
    read_frames,
    to_rate,
    write_video,
)

__all__ = [
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "WRITABLE_VIDEO_FORMATS",
    "VideoInfo",
    "VideoWriter",
    "check_output",
    "classify_input",
    "iter_batches",
    "list_images",
    "probe_video",
    "read_frames",
    "read_image",
    "tmp_beside",
    "to_rate",
    "write_image",
    "write_video",
]
