"""Tests of deid.io on tiny generated clips and images (each file a few KB, < 25 frames)."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from deid.errors import InputError, OutputError, ShapeError, VideoDecodeError
from deid.io import (
    Artefact,
    VideoWriter,
    as_stored,
    check_output_kind,
    check_writes,
    classify_input,
    iter_batches,
    list_images,
    probe_video,
    read_frames,
    read_image,
    read_image_format,
    read_range,
    shown_size,
    to_rate,
    upright,
    write_image,
    write_video,
)

from .conftest import scene

W, H = 96, 64


def moving_frames(n: int, width: int = W, height: int = H) -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB frames: a gradient with a bright square moving right."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], axis=-1)
    frames = []
    for i in range(n):
        f = base.astype(np.uint8)
        x = (i * 4) % max(1, width - 16)
        f[height // 4 : height // 4 + 16, x : x + 16] = (250, 240, 30)
        frames.append(f)
    return frames


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    write_video(path, moving_frames(12), fps=25)
    return path


@pytest.fixture
def clip_with_audio(tmp_path: Path) -> Path:
    """An mp4 with 10 H.264 frames and 0.5 s of a 440 Hz AAC tone, written with PyAV."""
    path = tmp_path / "with_audio.mp4"
    rate = 44100
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i, rgb in enumerate(moving_frames(10)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        t = np.arange(rate // 2) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        samples = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
        samples.sample_rate, samples.pts = rate, 0
        out.mux(audio.encode(samples))
        out.mux(audio.encode())
    return path


@pytest.fixture
def cv2_clip(tmp_path: Path) -> Path:
    """An MPEG-4 part 2 ('mp4v') mp4 written by OpenCV: 15 frames, 25 fps."""
    path = tmp_path / "cv2.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (W, H))
    assert writer.isOpened()
    for rgb in moving_frames(15):
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


# --- video -----------------------------------------------------------------------------


@pytest.mark.parametrize(("fps", "rate"), [(25, Fraction(25)), (29.97, Fraction(30000, 1001))])
def test_round_trip_keeps_count_size_and_fps(tmp_path: Path, fps: float, rate: Fraction) -> None:
    src = moving_frames(14)
    path = tmp_path / "out.mp4"
    assert write_video(path, src, fps=fps) == 14
    info = probe_video(path)
    assert (info.width, info.height, info.frame_count) == (W, H, 14)
    assert info.rate == rate
    assert info.fps == pytest.approx(float(rate))
    assert info.duration == pytest.approx(14 / float(rate), abs=1e-3)
    assert info.codec == "h264"
    assert not info.has_audio
    assert info.rotation == 0
    frames = list(read_frames(path))
    assert len(frames) == 14
    assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in frames)
    err = np.abs(np.stack(frames).astype(int) - np.stack(src).astype(int)).mean()
    assert err < 4, f"mean abs error {err:.2f} after a crf 18 round trip"
    assert leftovers(tmp_path) == []


def test_odd_size_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    write_video(path, moving_frames(6, width=63, height=47), fps=25)
    info = probe_video(path)
    assert (info.width, info.height, info.frame_count) == (63, 47, 6)
    assert all(f.shape == (47, 63, 3) for f in read_frames(path))


def test_mkv_round_trip_counts_frames_by_demuxing(tmp_path: Path) -> None:
    path = tmp_path / "out.mkv"
    write_video(path, moving_frames(9), fps=25)
    info = probe_video(path)  # matroska records no frame count
    assert (info.frame_count, info.rate) == (9, Fraction(25))
    assert len(list(read_frames(path))) == 9


def test_rotation_is_stored_and_probed(tmp_path: Path) -> None:
    path = tmp_path / "rot.mp4"
    with VideoWriter(path, 25, W, H, rotation=90) as writer:
        for f in moving_frames(3):
            writer.write(f)
    info = probe_video(path)
    assert info.rotation == 90
    assert (info.width, info.height) == (W, H)  # frames stay as stored


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_upright_frames_are_what_a_player_shows(tmp_path: Path, rotation: int) -> None:
    """``read_frames(upright=True)`` turns a frame as FFmpeg's own player logic does
    (OpenCV's autorotation, an independent reading of the display matrix), and
    :func:`as_stored` undoes it."""
    path = tmp_path / "rot.mp4"
    frames = moving_frames(2)
    with VideoWriter(path, 25, W, H, crf=0, rotation=rotation) as writer:
        for f in frames:
            writer.write(f)
    ours = list(read_frames(path, upright=True))
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    ok, bgr = cap.read()
    cap.release()
    assert ok
    shown = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    assert ours[0].shape == shown.shape == upright(frames[0], rotation).shape
    # OpenCV decodes 4:2:0 with FFmpeg's direct path, 1-2 levels off (frame_rgb); a wrong
    # turn is tens of levels off
    assert np.abs(ours[0].astype(int) - shown).mean() < 4
    assert np.abs(upright(frames[0], rotation + 180).astype(int) - shown).mean() > 20
    assert np.abs(ours[0].astype(int) - upright(frames[0], rotation)).mean() < 1.5
    assert np.array_equal(as_stored(upright(frames[1], rotation), rotation), frames[1])
    w, h = shown_size(W, H, rotation)
    assert ours[0].shape[:2] == (h, w)


def test_batches(clip: Path) -> None:
    batches = list(read_frames(clip, batch_size=5))
    assert [b.shape for b in batches] == [(5, H, W, 3), (5, H, W, 3), (2, H, W, 3)]
    assert [len(b) for b in iter_batches(range(7), 3)] == [3, 3, 1]
    assert list(iter_batches([], 3)) == []
    with pytest.raises(ValueError, match="expected"):
        list(iter_batches(range(3), 0))


def test_opencv_mp4v_clip(cv2_clip: Path, tmp_path: Path) -> None:
    info = probe_video(cv2_clip)
    assert (info.width, info.height, info.frame_count, info.fps) == (W, H, 15, 25.0)
    assert info.codec == "mpeg4"
    frames = list(read_frames(cv2_clip))
    assert len(frames) == 15
    out = tmp_path / "reencoded.mp4"
    assert write_video(out, frames, fps=info.rate) == 15
    assert probe_video(out).frame_count == 15


def test_audio_is_copied(clip_with_audio: Path, tmp_path: Path) -> None:
    assert probe_video(clip_with_audio).has_audio
    out = tmp_path / "deid.mp4"
    write_video(out, read_frames(clip_with_audio), fps=25, audio_from=clip_with_audio)
    info = probe_video(out)
    assert info.has_audio and info.frame_count == 10
    with av.open(str(out)) as c:
        audio = c.streams.audio[0]
        assert audio.codec_context.name == "aac"
        assert sum(p.size > 0 for p in c.demux(audio)) > 10


def test_audio_from_silent_file_warns(clip: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out.mp4"
    with caplog.at_level("WARNING", logger="deid.io.video"):
        write_video(out, moving_frames(3), fps=25, audio_from=clip)
    assert "without audio" in caplog.text
    info = probe_video(out)
    assert not info.has_audio and info.frame_count == 3


def test_text_file_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("these are not frames\n" * 20)
    with pytest.raises(VideoDecodeError, match=r"expected a video file \(mp4, mov") as e:
        probe_video(path)
    assert e.value.path == path and str(path) in str(e.value)
    with pytest.raises(VideoDecodeError, match="expected a video file"):
        read_frames(path)  # raises on the call, before iteration


def test_image_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    Image.fromarray(moving_frames(1)[0]).save(path)
    with pytest.raises(VideoDecodeError, match="expected a video file"):
        probe_video(path)
    with pytest.raises(VideoDecodeError, match="expected a video file"):
        read_frames(path)


def test_missing_video(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as e:
        probe_video(tmp_path / "nope.mp4")
    assert not isinstance(e.value, VideoDecodeError)
    with pytest.raises(InputError, match="not found"):
        read_frames(tmp_path / "nope.mp4")


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("fraction", [0.5, 0.6, 0.75, 0.9])
def test_truncated_faststart_mp4_raises(clip: Path, tmp_path: Path, fraction: float) -> None:
    # our writer puts the moov atom first, so the file opens and ends early
    bad = truncate(clip, tmp_path / "cut.mp4", fraction)
    with pytest.raises(VideoDecodeError, match=r"truncated|corrupt|expected a video"):
        list(read_frames(bad))


def test_truncated_mp4_with_index_at_end_raises(cv2_clip: Path, tmp_path: Path) -> None:
    bad = truncate(cv2_clip, tmp_path / "cut.mp4", 0.6)  # OpenCV writes the moov atom last
    with pytest.raises(VideoDecodeError):
        probe_video(bad)
    with pytest.raises(VideoDecodeError):
        list(read_frames(bad))


@pytest.mark.parametrize("fraction", [0.6, 0.97])
def test_truncated_mkv_raises(tmp_path: Path, fraction: float) -> None:
    # matroska has no frame count; the Segment size in its header gives the cut away
    good = tmp_path / "good.mkv"
    write_video(good, moving_frames(20), fps=25)
    bad = truncate(good, tmp_path / "cut.mkv", fraction)
    with pytest.raises(VideoDecodeError, match="truncated"):
        read_frames(bad)
    with pytest.raises(VideoDecodeError, match="truncated"):
        probe_video(bad)


def test_writer_exception_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(out, 25, W, H) as writer:
        writer.write(moving_frames(1)[0])
        assert writer.tmp_path.parent == tmp_path
        assert writer.tmp_path.name.startswith(".out.mp4.tmp-")
        assert writer.tmp_path.suffix == ".mp4"
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_failure_keeps_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous")
    with (
        pytest.raises(ShapeError, match=r"expected shape \(64, 96, 3\)"),
        VideoWriter(out, 25, W, H) as writer,
    ):
        writer.write(np.zeros((H + 2, W, 3), np.uint8))
    assert out.read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


def test_writer_without_frames_raises(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(OutputError, match="no frames"), VideoWriter(out, 25, W, H):
        pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="expected a video suffix"):
        VideoWriter(tmp_path / "out.avi", 25, W, H)


def test_to_rate() -> None:
    assert to_rate(25) == Fraction(25)
    assert to_rate(29.97) == Fraction(30000, 1001)
    assert to_rate(30000 / 1001) == Fraction(30000, 1001)
    assert to_rate(23.976) == Fraction(24000, 1001)
    assert to_rate(12.5) == Fraction(25, 2)
    with pytest.raises(ValueError, match="positive"):
        to_rate(0)


def test_real_clip_probe() -> None:
    path = (
        Path(os.environ.get("DEID_DATA_DIR", "/work/shared/data"))
        / "scenes/pedestrians_walking_1080p.mp4"
    )
    if not path.is_file():
        pytest.skip(f"{path} not present")
    info = probe_video(path)
    assert (info.width, info.height, info.frame_count) == (1920, 1080, 105)
    assert info.fps == 25.0
    assert info.duration == pytest.approx(4.2, abs=0.05)


@pytest.mark.parametrize("depth", [8, 10])
def test_decoded_frames_keep_their_brightness(tmp_path: Path, depth: int) -> None:
    """Frames written losslessly read back as written, on average: FFmpeg's direct 4:2:0 to
    RGB conversion read them 1-2 grey levels darker (so every pass through deid darkened the
    footage); the chroma is now upsampled first (deid.io.video.frame_rgb)."""
    photo = scene("group_friends_stoop.jpg")
    frames = [
        cv2.resize(photo[i * 40 : i * 40 + 540, i * 60 : i * 60 + 960], (320, 180))
        for i in range(3)
    ]
    path = tmp_path / f"lossless{depth}.mkv"
    if depth == 8:  # deid's own writer: BT.601, limited range, 4:2:0
        write_video(path, frames, fps=25, crf=0)
    else:  # a 10-bit BT.709 4:2:0 camera file
        with av.open(str(path), "w") as out:
            st = out.add_stream("libx264", rate=25, options={"qp": "0"})
            st.width, st.height, st.pix_fmt = 320, 180, "yuv420p10le"
            st.codec_context.colorspace = st.codec_context.color_primaries = 1
            for f in frames:
                vf = av.VideoFrame.from_ndarray(f, format="rgb24")
                vf = vf.reformat(format="yuv420p10le", dst_colorspace="ITU709")
                vf.colorspace = 1
                for packet in st.encode(vf):
                    out.mux(packet)
            for packet in st.encode():
                out.mux(packet)
    back = np.stack(list(read_frames(path))).astype(int)
    diff = back - np.stack(frames).astype(int)
    # before: 1.1-1.35 (8-bit) darker; the rest of the error is 4:2:0's lost chroma detail
    assert np.abs(diff.reshape(-1, 3).mean(0)).max() < 0.35, diff.reshape(-1, 3).mean(0)
    table = np.stack([f for _, f in read_range(path, 0, 3)]).astype(int)
    np.testing.assert_array_equal(table, back)  # a chunk's reader decodes the same pixels


@pytest.mark.parametrize(
    ("colour", "tagged"),
    [
        (None, (6, 6, 6)),  # untagged: BT.601, as read_frames decodes untagged video
        ((1, 1, 1), (1, 1, 1)),  # BT.709
        ((9, 9, 18), (9, 9, 18)),  # BT.2020, HLG
        ((0, 2, 2), (6, 6, 6)),  # a matrix swscale has no coefficients for (RGB): BT.601
    ],
)
def test_the_writer_keeps_an_inputs_colour(
    tmp_path: Path, colour: tuple[int, int, int] | None, tagged: tuple[int, int, int]
) -> None:
    frames = [cv2.resize(scene("group_friends_stoop.jpg"), (320, 180))] * 2
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 25, 320, 180, crf=0, colour=colour) as w:
        for f in frames:
            w.write(f)
    assert probe_video(path).colour == tagged
    diff = np.stack(list(read_frames(path))).astype(int) - np.stack(frames).astype(int)
    assert np.abs(diff.reshape(-1, 3).mean(0)).max() < 0.35  # converted with that matrix


# --- images ----------------------------------------------------------------------------


def test_png_round_trip_is_exact(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 51, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "a.png"
    write_image(path, rgb)
    np.testing.assert_array_equal(read_image(path), rgb)
    assert leftovers(path.parent) == []


def test_jpeg_round_trip_is_close(tmp_path: Path) -> None:
    rgb = moving_frames(1)[0]
    write_image(tmp_path / "a.JPG", rgb, quality=95)
    back = read_image(tmp_path / "a.JPG")
    assert back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 3


def test_write_image_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"expected one of .*\.png"):
        write_image(tmp_path / "a.gif", moving_frames(1)[0])
    with pytest.raises(ShapeError):
        write_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_read_image_converts_modes_and_orientation(tmp_path: Path) -> None:
    Image.new("L", (5, 3), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (5, 3), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((3, 5), 65535, np.uint16)).save(tmp_path / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (5, 3), (200, 0, 0)).save(tmp_path / "rotated.jpg", exif=exif)
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == (3, 5, 3) and gray.dtype == np.uint8 and (gray == 77).all()
    assert (read_image(tmp_path / "rgba.png") == (10, 20, 30)).all()
    assert (read_image(tmp_path / "deep.png") == 255).all()
    assert read_image(tmp_path / "rotated.jpg").shape == (5, 3, 3)


def test_write_image_gives_back_the_inputs_pixel_format(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Greyscale stays greyscale, alpha is kept, 16-bit greyscale stays 16-bit with every
    pixel the 8-bit picture left as read kept at its full depth."""
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (6, 7), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    alpha = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    rgba = np.dstack([rng.integers(0, 256, (6, 7, 3), dtype=np.uint8), alpha])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba[:, :, 0]).save(tmp_path / "grey.png")

    rgb, fmt = read_image_format(tmp_path / "deep.png")
    assert fmt.grey and fmt.deep is not None and fmt.alpha is None
    np.testing.assert_array_equal(rgb[:, :, 1], deep // 257)
    rgb[2, 3] = 9  # a protected pixel, grey as deid keeps a grey face
    for suffix in ("png", "tif"):
        write_image(tmp_path / f"out.{suffix}", rgb, like=fmt)
        back = Image.open(tmp_path / f"out.{suffix}")
        assert back.mode == "I;16"
        want = deep.copy()
        want[2, 3] = 9 * 257
        np.testing.assert_array_equal(np.asarray(back), want)
        np.testing.assert_array_equal(read_image(tmp_path / f"out.{suffix}"), rgb)

    rgb, fmt = read_image_format(tmp_path / "rgba.png")
    assert not fmt.grey and fmt.alpha is not None
    for suffix in ("png", "webp", "tiff"):
        write_image(tmp_path / f"out_rgba.{suffix}", rgb, quality=100, like=fmt)
        back = Image.open(tmp_path / f"out_rgba.{suffix}")
        assert back.mode == "RGBA", suffix
        np.testing.assert_array_equal(np.asarray(back)[:, :, 3], alpha)
    with caplog.at_level(logging.WARNING, logger="deid.io.images"):
        write_image(tmp_path / "out_rgba.jpg", rgb, like=fmt)  # JPEG holds no alpha
    assert Image.open(tmp_path / "out_rgba.jpg").mode == "RGB"
    assert "alpha channel is not kept (JPEG holds none)" in caplog.text

    rgb, fmt = read_image_format(tmp_path / "grey.png")
    assert fmt.grey and fmt.alpha is None and fmt.deep is None
    write_image(tmp_path / "out_grey.jpg", rgb, like=fmt)
    assert Image.open(tmp_path / "out_grey.jpg").mode == "L"
    rgb[0, 0] = (255, 0, 0)  # colour on a grey picture: written in colour, and said
    with caplog.at_level(logging.WARNING, logger="deid.io.images"):
        write_image(tmp_path / "out_grey.png", rgb, like=fmt)
    assert Image.open(tmp_path / "out_grey.png").mode == "RGB"
    assert "greyscale input written in colour" in caplog.text
    with pytest.raises(ShapeError, match=r"like\.alpha"):
        write_image(tmp_path / "x.png", rgb[:3], like=read_image_format(tmp_path / "rgba.png")[1])


def test_read_image_corrupt(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    with pytest.raises(InputError, match=r"not a readable image \(expected jpg, png"):
        read_image(junk)
    good = tmp_path / "good.jpg"
    write_image(good, np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="not a readable image"):
        read_image(cut)
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_classify_input(tmp_path: Path, clip: Path) -> None:
    (tmp_path / "a.PNG").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert classify_input(clip) == "video"
    assert classify_input(tmp_path / "a.PNG") == "image"
    assert classify_input(tmp_path) == "folder"
    with pytest.raises(InputError, match=r"expected a folder, a video \(.*\.mp4.*\) or an image"):
        classify_input(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="does not exist"):
        classify_input(tmp_path / "missing.mp4")


def test_list_images_recursive_sorted(tmp_path: Path) -> None:
    for rel in [
        "b.jpg",
        "a.PNG",
        "sub/z.webp",
        "sub/deeper/c.tiff",
        "sub/notes.txt",
        ".hidden.jpg",
        ".cache/x.jpg",
        "sub/.thumbs/y.png",
        "clip.mp4",
    ]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.PNG", "b.jpg", "sub/deeper/c.tiff", "sub/z.webp"]
    with pytest.raises(InputError, match="expected an existing folder"):
        list_images(tmp_path / "b.jpg")


def _check_run(src: Path, dst: Path) -> None:
    """What `deid run` checks of its output (deid.pipeline.check_run, without the report)."""
    kind = classify_input(src)
    check_writes([("input", src)], [Artefact("output", dst, folder=kind == "folder")])
    check_output_kind(kind, dst)


def test_check_writes(tmp_path: Path, clip: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    (tmp_path / "outdir").mkdir()
    link = tmp_path / "link.mp4"
    link.symlink_to(clip)
    hard = tmp_path / "hard.mp4"
    os.link(clip, hard)

    _check_run(clip, tmp_path / "new" / "clip_deid.mp4")
    _check_run(photos, tmp_path / "photos_deid")
    _check_run(photos / "a.jpg", tmp_path / "a_deid.png")

    with pytest.raises(OutputError, match="is the input"):
        _check_run(clip, clip)
    with pytest.raises(OutputError, match="is the input"):
        _check_run(clip, link)
    with pytest.raises(OutputError, match="is the input"):
        _check_run(clip, hard)
    with pytest.raises(OutputError, match="inside the input folder"):
        _check_run(photos, photos / "out")
    with pytest.raises(OutputError, match="the output folder contains the input folder"):
        _check_run(photos, tmp_path)
    with pytest.raises(OutputError, match="is the input"):
        _check_run(photos, photos)
    with pytest.raises(OutputError, match="existing folder"):
        _check_run(clip, tmp_path / "outdir")
    with pytest.raises(OutputError, match="existing file"):
        _check_run(photos, clip)
    with pytest.raises(OutputError, match=r"expected one of .*\.mp4"):
        _check_run(clip, tmp_path / "out.png")
    with pytest.raises(OutputError, match=r"expected one of .*\.jpg"):
        _check_run(photos / "a.jpg", tmp_path / "out.mp4")
    with pytest.raises(InputError):
        _check_run(tmp_path / "missing.mp4", tmp_path / "out.mp4")
    # artefacts among themselves: not the same path, not one inside the other
    out = Artefact("output", tmp_path / "o", folder=True)
    with pytest.raises(OutputError, match=r"the sheet is inside the output folder .*/o;"):
        check_writes([], [out, Artefact("sheet", tmp_path / "o" / "s.png")])
    with pytest.raises(OutputError, match="the sheet is the report"):
        check_writes([], [Artefact("report", clip), Artefact("sheet", link)])
    # the folder written to must take a new file
    with pytest.raises(OutputError, match=r"a\.jpg is a file; expected a folder"):
        check_writes([], [Artefact("output", photos / "a.jpg" / "x" / "y.png")])


def test_read_range_seeks_to_exactly_the_asked_frames(tmp_path: Path) -> None:
    """Seeking by the frame table gives the same frames as decoding from the start (B-frames,
    a keyframe every 5 frames, variable frame rate)."""
    from deid.io import concat_videos, frame_table, read_range

    path = tmp_path / "vfr.mp4"
    tb = Fraction(1, 1000)
    pts = np.cumsum([0, 40, 60, 40, 80, 40, 40, 60, 40, 40, 80, 40, 60, 40, 40, 40, 60, 40])
    frames = moving_frames(len(pts))
    for i, f in enumerate(frames):
        f[0:8, 0:8] = i * 12  # a per-frame mark
    with VideoWriter(path, 25, W, H, crf=10, time_base=tb) as w:
        w._stream.codec_context.gop_size = 5
        for p, f in zip(pts, frames, strict=True):
            w.write(f, pts=int(p))
    table = frame_table(path)
    assert len(table.pts) == len(pts)
    assert [float(p * table.time_base) for p in table.pts] == pytest.approx(pts / 1000)
    everything = list(read_frames(path))
    for start, stop in [(0, 3), (7, 12), (11, 18), (17, 18)]:
        got = list(read_range(path, start, stop, table))
        assert [p for p, _ in got] == table.pts[start:stop]
        for k, (_, f) in enumerate(got):
            assert np.array_equal(f, everything[start + k])
    with pytest.raises(VideoDecodeError):
        list(read_range(path, 10, 19, table))
    # segments with the input's timestamps join back into the same timeline
    parts = []
    for k, (a, b) in enumerate([(0, 7), (7, 18)]):
        part = tmp_path / f"p{k}.mp4"
        with VideoWriter(part, 25, W, H, crf=10, time_base=table.time_base) as w:
            for p, f in read_range(path, a, b, table):
                w.write(f, pts=p)
        parts.append(part)
    joined = tmp_path / "joined.mp4"
    assert concat_videos(parts, joined) == len(pts)
    t2 = frame_table(joined)
    assert [float(p * t2.time_base) for p in t2.pts] == pytest.approx(pts / 1000)
    assert leftovers(tmp_path) == []


def test_frame_table_refuses_a_truncated_avi(tmp_path: Path) -> None:
    """An AVI cut short still opens and its header still lists every frame: the frame table
    (what a video job is planned from) must refuse it rather than plan a shorter video."""
    from deid.io import frame_table

    path = tmp_path / "clip.avi"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuvj420p"
        for i, rgb in enumerate(moving_frames(20)):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert len(frame_table(path).pts) == 20
    cut = tmp_path / "cut.avi"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])
    with pytest.raises(VideoDecodeError, match="truncated"):
        frame_table(cut)


def restamp(src: Path, dst: Path, pts: list[int]) -> Path:
    """Copy ``src``'s video packets into ``dst`` with the timestamps ``pts`` (no re-encoding):
    a file as a broken muxer writes it, which opens and decodes like any other."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        stream = i.streams.video[0]
        out = o.add_stream_from_template(stream)
        packets = [p for p in i.demux(stream) if p.size]
        for packet, t in zip(packets, pts, strict=True):
            packet.pts = packet.dts = t
            packet.stream = out
            o.mux(packet)
    return dst


@pytest.mark.parametrize(
    ("suffix", "pts", "repeated"),
    [(".mkv", [0] * 12, 11), (".mp4", [0] * 12, 11), (".mkv", [0, 1, 2, 2, *range(3, 11)], 1)],
)
def test_frame_table_refuses_repeated_timestamps(
    clip: Path, tmp_path: Path, suffix: str, pts: list[int], repeated: int
) -> None:
    """Frames that share a presentation timestamp cannot be written back in order (the job
    would fail at its first segment, after the attack ran): refused when the table is read."""
    import deid.io

    bad = restamp(clip, tmp_path / f"bad{suffix}", [40 * t for t in pts])
    assert probe_video(bad).frame_count == 12  # the container itself does not complain
    for check in ("frame_table", "check_video"):
        with pytest.raises(VideoDecodeError, match=f"{repeated} of its 12 frames") as e:
            getattr(deid.io, check)(bad)
        assert e.value.path == bad and "distinct timestamp" in str(e.value)
    from deid.io import check_video, frame_table

    good = restamp(clip, tmp_path / f"good{suffix}", [40 * t for t in range(12)])
    assert len(frame_table(good).pts) == 12
    assert check_video(good) == probe_video(good)


def test_an_image_over_the_decompression_guard_is_named_as_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ortho.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 10000 px: over twice the guard
    with pytest.raises(InputError, match=r"larger than the 4000 pixels deid reads.*tiles"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".webp"])
def test_an_images_colour_profile_is_kept(tmp_path: Path, suffix: str) -> None:
    """A photo's ICC profile (a phone's Display P3, say) is written back, so its colours show
    as they did."""
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / f"in{suffix}"
    rgb = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src, icc_profile=profile)
    back, fmt = read_image_format(src)
    assert fmt.icc == profile
    write_image(tmp_path / f"out{suffix}", back, like=fmt)
    assert Image.open(tmp_path / f"out{suffix}").info.get("icc_profile") == profile
    write_image(tmp_path / f"plain{suffix}", back)  # no `like`: nothing to keep
    assert not Image.open(tmp_path / f"plain{suffix}").info.get("icc_profile")
