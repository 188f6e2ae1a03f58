"""Video jobs end to end on real faces: chunks, tracking across chunk boundaries, timestamps
(variable frame rate), audio, fail-closed gaps, and that the job's steps give the bytes
``deid run`` gives."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from deid.config import load_settings
from deid.errors import DeidError
from deid.io import (
    VideoWriter,
    as_stored,
    field_frame,
    frame_table,
    probe_video,
    read_frames,
    write_image,
)
from deid.pipeline import Resources, run
from deid.pipeline import video as job

from .conftest import SCENES, scene

W, H = 480, 320
N = 14
TB = Fraction(1, 1000)
# variable frame rate: 40-80 ms between frames
PTS = [0, 40, 100, 140, 220, 260, 300, 380, 420, 460, 540, 580, 620, 700]


def _settings(**pipeline):
    return load_settings(
        overrides={
            "pipeline": {"device": "cpu", "chunk_frames": 4, **pipeline},
            "attack": {"name": "ifgsm", "steps": 10},
        }
    )


@pytest.fixture(scope="module")
def resources() -> Resources:
    return Resources.load(_settings())


def face_frames(blur: set[int] = frozenset()) -> list[np.ndarray]:
    """The astronaut's face (about 90 px) gliding right over a grey background."""
    face = cv2.resize(scene("astronaut_single_face.png"), (200, 200), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(N):
        f = np.full((H, W, 3), 120, np.uint8)
        x = 20 + 12 * i
        f[60:260, x : x + 200] = face
        if i in blur:  # the detector misses this frame's face; the face is still there
            f[60:260, x : x + 200] = cv2.GaussianBlur(face, (0, 0), 6)
        frames.append(f)
    return frames


def write_clip(path: Path, frames: list[np.ndarray], audio: bool = True) -> Path:
    """An mp4 with VFR H.264 video (PTS, ms) and, optionally, 0.8 s of a 440 Hz AAC tone."""
    rate = 44100
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        video.time_base = TB
        video.codec_context.time_base = TB
        video.options = {"crf": "12"}
        a = None
        if audio:
            a = out.add_stream("aac", rate=rate)
            a.layout = "mono"
        for pts, rgb in zip(PTS, frames, strict=True):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = pts, TB
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if a is not None:
            t = np.arange(int(rate * 0.8)) / rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            samples = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            samples.sample_rate, samples.pts = rate, 0
            out.mux(a.encode(samples))
            out.mux(a.encode())
    return path


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def test_an_hlg_clip_keeps_its_colour(tmp_path: Path, resources: Resources) -> None:
    """A 10-bit BT.2020 HLG clip (as a drone shoots it) comes out tagged BT.2020 HLG, its
    picture away from the face as it was (at 8 bits), in two chunks."""
    frames = face_frames()[:6]
    src = tmp_path / "hlg.mp4"
    with av.open(str(src), mode="w") as out:
        st = out.add_stream("libx264", rate=25, options={"crf": "8"})
        st.width, st.height, st.pix_fmt = W, H, "yuv420p10le"
        ctx = st.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc = 9, 9, 18
        for rgb in frames:
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf = vf.reformat(format="yuv420p10le", dst_colorspace=9)
            vf.colorspace = 9
            out.mux(st.encode(vf))
        out.mux(st.encode())
    assert probe_video(src).colour == (9, 9, 18)
    out = tmp_path / "out.mp4"
    report = run(src, out, resources.settings, progress=False, resources=resources)
    assert report["totals"]["faces"] >= 6 and report["totals"]["unprotected_faces"] == 0
    assert probe_video(out).colour == (9, 9, 18)
    a, b = (np.stack(list(read_frames(p))).astype(int) for p in (src, out))
    away = np.ones(a.shape[:3], bool)
    for f in report["faces_detail"]:
        x1, y1, x2, y2 = f["region"]
        away[f["frame"], y1:y2, x1:x2] = False
    diff = (b - a)[away]
    assert np.abs(diff.mean(0)).max() < 0.5 and np.abs(diff).mean() < 2.0


def test_a_portrait_clip_is_searched_upright(tmp_path: Path, resources: Resources) -> None:
    """A phone's portrait clip is stored sideways with a display rotation: its faces are
    found and protected the right way up, reported in the frame a player shows, and the
    output is stored and tagged as the input is."""
    frames = face_frames()[:6]
    src = tmp_path / "portrait.mp4"
    with VideoWriter(src, 25, H, W, crf=8, rotation=90) as w:  # stored sideways
        for f in frames:
            w.write(as_stored(f, 90))
    assert probe_video(src).rotation == 90
    out = tmp_path / "out.mp4"
    report = run(src, out, resources.settings, progress=False, resources=resources)
    assert report["totals"]["faces"] == 6 and report["totals"]["unprotected_faces"] == 0
    for f in report["faces_detail"]:  # boxes in the upright frame, on the face
        x1, y1, x2, y2 = f["box"]
        fx = 20 + 12 * f["frame"]
        assert fx - 10 < (x1 + x2) / 2 < fx + 210 and 50 < (y1 + y2) / 2 < 270
    o = probe_video(out)
    assert (o.width, o.height, o.rotation, o.frame_count) == (H, W, 90, 6)
    a, b = (np.stack(list(read_frames(p, upright=True))).astype(int) for p in (src, out))
    assert a.shape == b.shape == (6, H, W, 3)
    away = np.ones(a.shape[:3], bool)
    for f in report["faces_detail"]:
        x1, y1, x2, y2 = f["region"]
        away[f["frame"], y1:y2, x1:x2] = False
        assert np.abs(b[f["frame"], y1:y2, x1:x2] - a[f["frame"], y1:y2, x1:x2]).mean() > 1
    assert np.abs(b - a)[away].mean() < 2.0


def test_an_anamorphic_clip_keeps_its_pixel_shape(tmp_path: Path, resources: Resources) -> None:
    """Anamorphic video (pixels 4:3 wide: 360x320 stored, shown 480x320) comes out tagged
    as it came in, through every chunk and the assembly, so players show it as wide."""
    frames = [cv2.resize(f, (360, H), interpolation=cv2.INTER_AREA) for f in face_frames()[:6]]
    src = tmp_path / "anamorphic.mp4"
    with VideoWriter(src, 25, 360, H, crf=8, sample_aspect=Fraction(4, 3)) as w:
        for f in frames:
            w.write(f)
    assert probe_video(src).sample_aspect == Fraction(4, 3)
    out = tmp_path / "out.mp4"
    report = run(src, out, resources.settings, progress=False, resources=resources)
    assert report["totals"]["faces"] >= 6 and report["totals"]["unprotected_faces"] == 0
    o = probe_video(out)
    assert (o.width, o.height, o.sample_aspect) == (360, H, Fraction(4, 3))
    assert probe_video(write_clip(tmp_path / "square.mp4", face_frames())).sample_aspect is None


def test_an_interlaced_clip_is_searched_in_one_field_and_stays_interlaced(
    tmp_path: Path, resources: Resources
) -> None:
    """Interlaced video (two fields a moment apart, woven into each frame) combs moving
    faces, and the detector misses some; one field shows them whole. A job detects in one
    field and writes its output interlaced, with the input's field order."""
    clip = SCENES / "pedestrians_walking_1080p.mp4"
    frames = []
    for k, f in enumerate(read_frames(clip)):
        if k >= 8:
            break
        frames.append(np.ascontiguousarray(f[::2, ::2]))  # 960x540, 7-8 walkers' faces
    woven = []
    for a, b in zip(frames[::2], frames[1::2], strict=True):
        w = b.copy()
        w[1::2] = a[1::2]  # bottom field first: the top field one frame later
        woven.append(w)
    found = [
        sum(len(d) for d in resources.detector.detect(fs))
        for fs in (frames[::2], woven, [field_frame(w) for w in woven])
    ]
    progressive, combed, field = found
    assert field >= combed + 4 and field >= progressive - 1, found
    src = tmp_path / "interlaced.mp4"
    with VideoWriter(src, 25, 960, 540, crf=10, interlaced="bff") as w:
        for f in woven:
            w.write(f)
    assert probe_video(src).interlaced == "bff"
    out = tmp_path / "out.mp4"
    report = run(src, out, resources.settings, progress=False, resources=resources)
    assert report["totals"]["faces"] >= field and report["totals"]["unprotected_faces"] == 0
    assert probe_video(out).interlaced == "bff"


def test_every_audio_track_is_kept(tmp_path: Path, resources: Resources) -> None:
    """A clip with two audio tracks (two languages, say) keeps both, packet for packet, with
    their language tags."""
    rate = 44100
    src = tmp_path / "two_tracks.mp4"
    with av.open(str(src), mode="w") as out:
        video = out.add_stream("libx264", rate=25, options={"crf": "12"})
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        tracks = []
        for lang in ("eng", "deu"):
            a = out.add_stream("aac", rate=rate)
            a.layout = "mono"
            a.metadata["language"] = lang
            tracks.append(a)
        for rgb in face_frames()[:6]:
            out.mux(video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(video.encode())
        t = np.arange(int(rate * 0.24)) / rate
        for hz, a in zip((440, 660), tracks, strict=True):
            tone = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]
            samples = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            samples.sample_rate, samples.pts = rate, 0
            out.mux(a.encode(samples))
            out.mux(a.encode())
    dst = tmp_path / "out.mp4"
    report = run(src, dst, resources.settings, progress=False, resources=resources)
    assert report["totals"]["unprotected_faces"] == 0

    def tracks_of(path: Path) -> list[tuple[str, list[bytes]]]:
        with av.open(str(path)) as c:
            langs = [st.metadata.get("language", "") for st in c.streams.audio]
            packets: list[list[bytes]] = [[] for _ in langs]
            index = {st.index: i for i, st in enumerate(c.streams.audio)}
            for p in c.demux(*c.streams.audio):
                if p.size:
                    packets[index[p.stream.index]].append(bytes(p))
        return list(zip(langs, packets, strict=True))

    before, after = tracks_of(src), tracks_of(dst)
    assert [lang for lang, _ in after] == ["eng", "deu"]
    assert after == before and all(len(p) > 5 for _, p in after)


def test_chunked_video_keeps_timestamps_audio_and_one_target(
    tmp_path: Path, resources: Resources
) -> None:
    src = write_clip(tmp_path / "in.mp4", face_frames(blur={6}))
    out = tmp_path / "out.mp4"
    report = run(src, out, resources.settings, progress=False, resources=resources)

    # timestamps (VFR), frame count, size, duration and audio are the input's
    tin, tout = frame_table(src), frame_table(out)
    assert [float(p * tin.time_base) for p in tin.pts] == pytest.approx(
        [float(p * tout.time_base) for p in tout.pts], abs=1e-3
    )
    i, o = probe_video(src), probe_video(out)
    assert (o.frame_count, o.width, o.height) == (N, W, H)
    assert abs(o.duration - i.duration) <= 0.08
    assert o.has_audio and audio_packets(out) == audio_packets(src)
    v = report["video"]
    assert v["chunks"] == 4 and v["frames_in"] == v["frames_out"] == N

    # one track through every chunk boundary, one target, every frame covered
    t = report["totals"]
    assert t["tracks"] == 1 and report["tracks"][0]["first"] == 0
    assert report["tracks"][0]["last"] == N - 1
    assert t["target_changes_within_tracks"] == 0
    assert len({f["target"] for f in report["faces_detail"]}) == 1
    assert report["coverage"]["faces"] == [1] * N
    assert report["coverage"]["protected"] == [1] * N
    assert t["frames_with_unprotected_face"] == 0 and t["unprotected_faces"] == 0

    # the frame where MTCNN missed the face is filled in, and its face was changed
    kinds = {f["frame"]: f["kind"] for f in report["faces_detail"]}
    assert kinds[6] == "interpolated" and kinds[5] == kinds[7] == "detected"
    frames_in, frames_out = list(read_frames(src)), list(read_frames(out))
    x1, y1, x2, y2 = next(f["region"] for f in report["faces_detail"] if f["frame"] == 6)
    diff = np.abs(frames_out[6][y1:y2, x1:x2].astype(int) - frames_in[6][y1:y2, x1:x2])
    assert diff.mean() > 2.0

    # the report on disk is the returned one; no work files are left behind
    saved = json.loads((tmp_path / "out.report.json").read_text())
    assert saved["totals"] == t and "coverage" in saved and "tracks" in saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4", "out.report.json"]


def test_job_steps_in_any_order_give_the_bytes_of_deid_run(
    tmp_path: Path, resources: Resources
) -> None:
    """What the service does (chunks on different workers, in any order) equals `deid run`."""
    src = write_clip(tmp_path / "in.mp4", face_frames(), audio=False)
    single = tmp_path / "single.mp4"
    first = run(src, single, resources.settings, progress=False, resources=resources)

    layout = job.split(src, 4)
    chunks = job.chunks_of(layout)
    analyses = json.loads(json.dumps([job.analyse(src, layout, c, resources) for c in chunks]))
    # a weak detection (under detector.min_score) on its own, far from the face: the plan
    # drops it with its unconfirmed track, so the bytes stay those of `deid run`, and the
    # report counts it
    weak = {**analyses[0]["faces"][0][0], "score": 0.7}
    weak["box"] = [2.0, 2.0, 22.0, 26.0]
    weak["landmarks"] = [[8.0, 10.0], [16.0, 10.0], [12.0, 15.0], [9.0, 20.0], [15.0, 20.0]]
    analyses[0]["faces"][0].append(weak)
    plan = job.plan(layout, analyses[::-1], resources)
    assert plan["unconfirmed"] == first["totals"]["detections_unconfirmed"] + 1
    parts = {c.index: tmp_path / f"part{c.index}.mp4" for c in chunks}
    reports = [
        job.render(src, layout, plan, c, resources, parts[c.index]) for c in reversed(chunks)
    ]
    for c in chunks:
        assert job.chunk_ok(parts[c.index], c)
    out = tmp_path / "distributed.mp4"
    report = job.assemble(
        src, layout, [parts[c.index] for c in reversed(chunks)], out, reports, resources, plan
    )
    assert out.read_bytes() == single.read_bytes()
    assert report["totals"]["detections_unconfirmed"] == plan["unconfirmed"]


def test_chunk_ok_rejects_missing_or_damaged_segments(tmp_path: Path, resources: Resources) -> None:
    src = write_clip(
        tmp_path / "in.mp4", face_frames()[:4] + [np.zeros((H, W, 3), np.uint8)] * 10, audio=False
    )
    layout = job.split(src, 4)
    c = job.chunks_of(layout)[0]
    plan = job.plan(
        layout, [job.analyse(src, layout, k, resources) for k in job.chunks_of(layout)], resources
    )
    seg = tmp_path / "seg.mp4"
    assert not job.chunk_ok(seg, c)
    report = job.render(src, layout, plan, c, resources, seg)
    assert job.chunk_ok(seg, c) and report["chunk"] == c.to_dict()
    assert not job.chunk_ok(seg, job.chunks_of(layout)[1])  # another chunk's segment
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])
    assert not job.chunk_ok(seg, c)
    # frames without faces plan nothing (the track's end extends 2 frames into them)
    assert all(fr == [] for fr in plan["frames"][6:]) and plan["frames"][3]


def test_failed_input_leaves_nothing_at_the_output(tmp_path: Path, resources: Resources) -> None:
    src = write_clip(tmp_path / "in.mp4", face_frames(), audio=False)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    out = tmp_path / "out" / "x.mp4"
    with pytest.raises(DeidError, match=r"cannot open|truncated|corrupt"):
        run(broken, out, resources.settings, progress=False, resources=resources)
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_video_whose_frames_share_a_timestamp_is_refused_at_submission(tmp_path: Path) -> None:
    """Python (new_job) and HTTP refuse it with the reason (400) and queue nothing; the broker
    is unreachable here, so a job that got past the checks would answer 503."""
    from fastapi.testclient import TestClient

    from deid.config import ServiceConfig
    from deid.errors import VideoDecodeError
    from deid.service.api import create_app
    from deid.service.jobs import new_job

    from .test_io import restamp

    src = write_clip(tmp_path / "in.mp4", face_frames(), audio=False)
    bad = restamp(src, tmp_path / "frozen.mkv", [0] * N)
    out = tmp_path / "out.mkv"
    service = ServiceConfig(storage_roots=[str(tmp_path)], broker_url="redis://127.0.0.1:1/0")
    settings = load_settings(overrides={"service": service.model_dump(mode="json")})
    with pytest.raises(VideoDecodeError, match=f"{N - 1} of its {N} frames"):
        new_job(bad, out, settings, service)
    assert new_job(src, tmp_path / "out.mp4", settings, service).kind == "video"
    r = TestClient(create_app(settings)).post("/jobs", json={"input": str(bad), "output": str(out)})
    assert r.status_code == 400, r.text
    assert "frozen.mkv" in r.json()["detail"] and "distinct timestamp" in r.json()["detail"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frozen.mkv", "in.mp4"]


def test_video_whose_frames_share_a_timestamp_fails_its_batch_row_up_front(
    tmp_path: Path, resources: Resources
) -> None:
    """In a dataset batch (models already loaded) the file's row fails with the reason,
    from the job's first step (split), before any frame is attacked."""
    from deid.batch import process_file

    from .test_io import restamp

    bad = restamp(
        write_clip(tmp_path / "in.mp4", face_frames(), audio=False), tmp_path / "f.mkv", [0] * N
    )
    row = process_file(bad, tmp_path / "out" / "f.mkv", resources)
    assert row["status"] == "failed" and "distinct timestamp" in row["error"], row
    assert row["seconds"] < 5 and not (tmp_path / "out" / "f.mkv").exists()


@pytest.mark.slow
def test_pedestrian_clip_with_audio(tmp_path: Path, resources: Resources) -> None:
    """The real drone-like clip: 16 frames with its audio, chunks of 6."""
    clip = SCENES / "pedestrians_walking_1080p.mp4"
    if not clip.is_file():
        pytest.skip("shared clip not found")
    from deid.io import VideoWriter

    info = probe_video(clip)
    part = tmp_path / "part.mp4"
    with VideoWriter(part, info.rate, info.width, info.height, crf=12, audio_from=clip) as w:
        for k, f in enumerate(read_frames(clip)):
            if k >= 16:
                break
            w.write(f)
    out = tmp_path / "out.mp4"
    s = load_settings(overrides={"pipeline": {"device": "cpu", "chunk_frames": 6}})
    report = run(part, out, s, progress=False)
    o = probe_video(out)
    assert (o.frame_count, o.width, o.height) == (16, 1920, 1080)
    assert abs(o.fps - info.fps) < 1e-6 and o.has_audio
    assert audio_packets(out) == audio_packets(part)
    t = report["totals"]
    assert t["faces"] >= 32 and t["tracks"] >= 2
    assert t["frames_with_unprotected_face"] == 0 and t["unprotected_faces"] == 0
    assert t["target_changes_within_tracks"] == 0
    for f in report["faces_detail"]:
        assert f["action"] != "attacked" or not f["verified"]["is_original"]
    write_image(tmp_path / "last.png", list(read_frames(out))[-1])


_ENCODE_SEGMENT = """
import hashlib, sys
from fractions import Fraction
from pathlib import Path
import cv2, torchvision  # noqa: F401  (torchvision loaded, as in a worker)
from deid.pipeline import video as job
from deid.io import read_range
frames = [cv2.resize(f, (960, 540), interpolation=cv2.INTER_AREA)
          for _, f in read_range(Path(sys.argv[1]), 0, 3)]
layout = {"rate": "25", "width": 960, "height": 540, "time_base": "1/12800"}
out = Path(sys.argv[2])
with job._writer(out, layout, 18) as w:
    for i, f in enumerate(frames):
        w.write(f, pts=512 * i)
print(hashlib.sha256(out.read_bytes()).hexdigest())
"""


@pytest.mark.slow
def test_segments_encode_to_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    """The same frames give the same segment bytes in fresh worker processes. With x264's
    mbtree on, about half of such processes wrote other bytes (so a redone chunk, or a chunk
    on another worker, changed the output); five agreeing processes would happen by chance
    with probability about 1/16."""
    import subprocess
    import sys

    clip = SCENES / "pedestrians_walking_1080p.mp4"
    if not clip.is_file():
        pytest.skip("shared scenes not found")
    script = tmp_path / "encode.py"
    script.write_text(_ENCODE_SEGMENT)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(clip), str(tmp_path / f"s{i}.mp4")],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(5)
    ]
    digests = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(digests) == 1, digests


def test_worker_processes_give_the_bytes_and_report_of_one_process(
    tmp_path: Path, resources: Resources
) -> None:
    """`pipeline.workers: 2`: chunks analysed and rendered in two spawned processes; the
    video, the report's faces and the contact sheet's thumbnails are those of one process."""
    src = write_clip(tmp_path / "in.mp4", face_frames(), audio=False)
    one, two = tmp_path / "one.mp4", tmp_path / "two.mp4"
    thumbs1: list = []
    r1 = job.run_video(src, one, resources, progress=False, thumbnails=thumbs1)
    settings = resources.settings.model_copy(
        update={
            "pipeline": resources.settings.pipeline.model_copy(update={"workers": 2, "threads": 1})
        }
    )
    res2 = Resources(**{**resources.__dict__, "settings": settings})
    thumbs2: list = []
    r2 = job.run_video(src, two, res2, progress=False, thumbnails=thumbs2)
    assert r2["video"]["chunks"] == 4
    assert two.read_bytes() == one.read_bytes()
    assert r2["faces_detail"] == r1["faces_detail"] and r2["totals"] == r1["totals"]
    assert len(thumbs2) == len(thumbs1) > 0
    for a, b in zip(thumbs1, thumbs2, strict=True):
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a if isinstance(a[k], np.ndarray))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "one.mp4", "two.mp4"]


def test_an_error_in_a_worker_process_reaches_the_caller_as_itself(
    tmp_path: Path, resources: Resources
) -> None:
    """A chunk refused in its worker (a segment path that is not a video) reaches the caller
    as the same error, with its attributes (OutputError's constructor takes two)."""
    from deid.errors import OutputError
    from deid.pipeline.pool import ChunkPool

    src = write_clip(tmp_path / "in.mp4", face_frames(), audio=False)
    layout = job.split(src, 7)
    chunks = job.chunks_of(layout)
    pool = ChunkPool(resources.settings, 2)
    try:
        analyses = pool.map(job.analyse, [(src, layout, c) for c in chunks], chunks, print)
        plan = job.plan(layout, analyses, resources)
        parts = [tmp_path / f"part{c.index}.avi" for c in chunks]
        calls = [(src, layout, plan, c, p, False) for c, p in zip(chunks, parts, strict=True)]
        with pytest.raises(OutputError) as caught:
            pool.map(job.render_chunk, calls, chunks, print)
    finally:
        pool.close()
    assert caught.value.path == parts[0] and "segment suffix" in caught.value.reason
    assert not any(p.exists() for p in parts)
