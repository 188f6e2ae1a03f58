"""The job service end to end: real Redis (database 11), real `deid worker` processes, real
MTCNN and classifier, real videos. Python client, CLI and HTTP on the same jobs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deid.errors import ConfigError, DeidError, InputError, PartialFailure
from deid.service.storage import PathPolicyError, check_path
from tests.service_support import (
    DB,
    JOB_OVERRIDES,
    REPO,
    WorkerPool,
    decoded,
    face_clip,
    flush,
    redis_available,
    redis_url,
    reference_output,
    wait_for,
    worker_env,
)

URL = redis_url(DB)
needs_redis = pytest.mark.skipif(not redis_available(), reason="no Redis at 127.0.0.1:6379")


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
def service_settings(url: str, root: Path, **service: Any) -> Any:
    from deid.config import load_settings

    svc = {
        "broker_url": url,
        "storage_roots": [str(root)],
        "soft_time_limit": 20,
        "time_limit": 25,
        "visibility_timeout": 30,
        "restore_interval": 1,
        **service,
    }
    return load_settings(overrides={**JOB_OVERRIDES, "service": svc})


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture(scope="module")
def settings(root: Path) -> Any:
    return service_settings(URL, root)


@pytest.fixture(scope="module")
def redis_db() -> Any:
    if not redis_available():
        pytest.skip("no Redis at 127.0.0.1:6379")
    flush(URL)
    yield URL
    flush(URL)


@pytest.fixture(scope="module")
def pool(redis_db: str, root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    p = WorkerPool(redis_db, root, tmp_path_factory.mktemp("logs"))
    p.start(2)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def client(redis_db: str, settings: Any) -> Any:
    from deid.service.client import Client

    return Client(settings)


@pytest.fixture(scope="module")
def clip(root: Path) -> Path:
    return face_clip(root / "in" / "clip.mp4", frames=12)


@pytest.fixture(scope="module")
def reference(clip: Path, settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The same job run in one process (deid.pipeline.video.run_video, as `deid run` does)."""
    return reference_output(clip, settings, tmp_path_factory.getbasetemp())


def _no_leftovers(folder: Path) -> list[Path]:
    """Hidden temporary files or job folders left in ``folder``."""
    return [p for p in folder.rglob(".*") if p.name != "."]


# --------------------------------------------------------------------------------------------
# storage policy and settings (no Redis)
# --------------------------------------------------------------------------------------------
def test_path_policy(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"x")
    (root / "a" / "v.mp4").write_bytes(b"x")
    (root / "out").symlink_to(outside)
    (root / "inner").symlink_to(root / "a")
    assert check_path(root / "a" / "v.mp4", [root]) == (root / "a" / "v.mp4").resolve()
    assert check_path(root / "a" / "new.mp4", [root]).name == "new.mp4"  # need not exist
    assert check_path(root / "inner" / "v.mp4", [root]) == (root / "a" / "v.mp4").resolve()
    cases = {
        root / "a" / ".." / ".." / "outside" / "secret.mp4": "'..'",
        outside / "secret.mp4": "outside the storage roots",
        root / "out" / "secret.mp4": "symlink",
        root: "not the root",
        Path("relative/v.mp4"): "absolute",
    }
    for path, words in cases.items():
        with pytest.raises(PathPolicyError, match=words):
            check_path(path, [root])
    with pytest.raises(PathPolicyError, match="DEID_STORAGE_ROOTS"):
        check_path(root / "a" / "v.mp4", [])


def test_job_outputs_around_or_inside_the_input_are_refused(tmp_path: Path) -> None:
    """The submission check is the one `deid run` and `deid batch` use (no Redis, no worker)."""
    from deid.errors import OutputError
    from deid.service.jobs import new_job

    root = tmp_path / "root"
    n = root / "fold" / "a" / "n"
    n.mkdir(parents=True)
    (n / "x.png").write_bytes(b"an image, by its suffix")
    (root / "fold" / "link").symlink_to(root / "fold" / "a")
    odd = root / "odd" / "out.report.json"  # a folder named like the report of root/odd/out
    odd.mkdir(parents=True)
    (odd / "y.png").write_bytes(b"an image, by its suffix")
    clip = face_clip(root / "clip.mp4", frames=2)
    settings = service_settings("redis://127.0.0.1:1/0", root)
    cases = {
        (n, root / "fold" / "a"): "the output folder contains the input folder",
        (n, root / "fold" / "link"): "the output folder contains the input folder",
        (n, n): "the output folder is the input folder",
        (n, n / "out"): "the output folder is inside the input folder",
        (odd, root / "odd" / "out"): "the report is the input folder",
        (clip, root / "clip.mkv"): None,  # fine: a video beside its input
        (clip, n / "x.png"): "expected one of",
    }
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for (src, dst), words in cases.items():
        if words is None:
            assert new_job(src, dst, settings, settings.service).output == str(dst)
            continue
        with pytest.raises(OutputError, match=words):
            new_job(src, dst, settings, settings.service)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_service_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from deid.config import load_settings

    monkeypatch.setenv("DEID_BROKER_URL", "redis://example:6380/3")
    monkeypatch.setenv("DEID_STORAGE_ROOTS", f"/data/a,/data/b{os.pathsep}/data/c")
    monkeypatch.setenv("DEID_SERVICE__MAX_DELIVERIES", "5")
    s = load_settings()
    assert s.service.broker_url == "redis://example:6380/3"
    assert s.service.storage_roots == [Path("/data/a"), Path("/data/b"), Path("/data/c")]
    assert s.service.max_deliveries == 5
    # the long form wins over the short one
    monkeypatch.setenv("DEID_SERVICE__BROKER_URL", "redis://other:6379/0")
    assert load_settings().service.broker_url == "redis://other:6379/0"
    # a chunk may not be redelivered while it is still allowed to run
    with pytest.raises(ConfigError, match="visibility_timeout"):
        load_settings(overrides={"service": {"time_limit": 100, "visibility_timeout": 50}})
    # the token never shows in a dump (reports carry the settings)
    s = load_settings(overrides={"service": {"token": "hunter2"}})
    assert "hunter2" not in json.dumps(s.model_dump(mode="json"))


def test_celery_config_is_safe() -> None:
    from deid.config import ServiceConfig
    from deid.service.celery_app import celery_config

    c = celery_config(ServiceConfig())
    assert c["task_serializer"] == "json" and c["accept_content"] == ["json"]
    assert c["task_acks_late"] and c["task_reject_on_worker_lost"]
    assert c["worker_prefetch_multiplier"] == 1
    assert c["task_soft_time_limit"] < c["task_time_limit"]
    assert c["broker_transport_options"]["visibility_timeout"] > c["task_time_limit"]
    assert c["worker_max_memory_per_child"] > 0
    assert c["broker_url"] == "redis://127.0.0.1:6379/0"


# --------------------------------------------------------------------------------------------
# video jobs
# --------------------------------------------------------------------------------------------
@needs_redis
@pytest.mark.slow
def test_video_job_equals_single_process_and_keeps_targets_across_chunks(
    pool: WorkerPool, client: Any, clip: Path, root: Path, reference: Any
) -> None:
    out = root / "out" / "clip.mp4"
    job_id = client.submit(clip, out)
    report = client.wait(job_id, timeout=120)
    st = client.status(job_id)
    assert st["state"] == "SUCCESS" and st["progress"] == 1.0
    assert (st["frames_done"], st["frames_total"], st["chunks_done"], st["chunks_total"]) == (
        12,
        12,
        3,
        3,
    )
    # frame for frame the single-process result (same settings, same seed)
    ref_out, ref_report = reference
    got, want = decoded(out), decoded(ref_out)
    assert got.shape == want.shape == (12, 128, 192, 3)
    assert np.array_equal(got, want)
    assert out.read_bytes() == ref_out.read_bytes()  # same segments, joined the same way
    assert report["totals"] == ref_report["totals"]
    # the face crosses both chunk boundaries (frames 3|4 and 7|8): one track, one target,
    # protected in every frame
    assert report["totals"]["tracks"] == 1
    assert report["totals"]["target_changes_within_tracks"] == 0
    assert report["totals"]["unprotected_faces"] == 0
    assert report["coverage"]["faces"] == [1] * 12 and report["coverage"]["protected"] == [1] * 12
    faces = sorted(report["faces_detail"], key=lambda f: f["frame"])
    assert [f["frame"] for f in faces] == list(range(12))
    assert len({f["target"] for f in faces}) == 1 and len({f["track"] for f in faces}) == 1
    assert all(f["target"] != f["pred"] for f in faces)
    # merged report beside the output, work folder gone, nothing temporary left
    assert json.loads(out.with_name("clip.report.json").read_text())["job"]["id"] == job_id
    assert report["video"]["chunks"] == 3
    assert not _no_leftovers(root / "out")


@needs_redis
@pytest.mark.slow
def test_cli_submit_status_wait_jobs(
    pool: WorkerPool,
    clip: Path,
    root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = worker_env(URL, root, {"DEID_ATTACK__STEPS": "5", "DEID_PIPELINE__CHUNK_FRAMES": "6"})
    out = root / "cli" / "clip.mp4"
    cmd = [sys.executable, "-m", "deid.cli"]
    r = subprocess.run(
        [*cmd, "submit", str(clip), "-o", str(out), "--no-verify", "--wait"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[0]  # the id first, then the result line
    assert len(job_id) == 32
    assert f"{job_id} SUCCESS" in r.stdout and "100%" in r.stderr  # the progress bar
    assert len(decoded(out)) == 12
    # the other commands in-process (the same main() as the `deid` command)
    from deid.cli import main

    for k, v in env.items():
        if k.startswith("DEID_"):
            monkeypatch.setenv(k, v)
    assert main(["status", job_id]) == 0
    text = capsys.readouterr().out
    assert "SUCCESS" in text and "12/12 frames done" in text
    assert "chunks 2/2" in text  # DEID_PIPELINE__CHUNK_FRAMES=6 of the submitting shell
    assert main(["jobs", "--json"]) == 0
    assert job_id in {j["id"] for j in json.loads(capsys.readouterr().out)}
    assert main(["status", "0" * 32]) == 4
    assert "not found" in capsys.readouterr().err


# The HTTP job's settings: JOB_OVERRIDES' quick ones (the API starts from the server's defaults,
# whose one 12-frame chunk can run past the soft time limit on a loaded machine).
HTTP_JOB_SETTINGS = {
    "attack": {"name": "ifgsm", "steps": 5},
    "pipeline": {"verify": False, "chunk_frames": 4, "device": "cpu", "threads": 1},
}


@needs_redis
@pytest.mark.slow
def test_http_api(pool: WorkerPool, client: Any, clip: Path, root: Path, settings: Any) -> None:
    from fastapi.testclient import TestClient

    from deid.service.api import create_app

    http = TestClient(create_app(settings))
    schema = http.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/report", "/health"} <= set(schema["paths"])
    health = http.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["broker"] and {"w0@deid-test", "w1@deid-test"} <= set(
        health.json()["workers"]
    )
    out = root / "http" / "clip.mp4"
    r = http.post(
        "/jobs",
        json={"input": str(clip), "output": str(out), "settings": HTTP_JOB_SETTINGS},
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert r.json()["state"] in ("PENDING", "SPLITTING", "ANALYSING")
    st = wait_for(
        lambda: (s := http.get(f"/jobs/{job_id}").json())["state"] in ("SUCCESS", "FAILED") and s,
        120,
        "HTTP job",
        poll=0.3,
    )
    assert st["state"] == "SUCCESS", st
    rep = http.get(f"/jobs/{job_id}/report")
    assert rep.status_code == 200 and rep.json()["totals"]["frames"] == 12
    assert rep.json()["settings"]["pipeline"]["verify"] is False
    # cancelling a finished job leaves it as it is
    assert http.delete(f"/jobs/{job_id}").json()["state"] == "SUCCESS"
    assert job_id in {j["id"] for j in http.get("/jobs").json()}
    assert http.get("/jobs/" + "0" * 32).status_code == 404
    # with a token, every route but /health needs it
    from pydantic import SecretStr

    locked = settings.model_copy(
        update={"service": settings.service.model_copy(update={"token": SecretStr("s3cret")})}
    )
    http2 = TestClient(create_app(locked))
    assert http2.get(f"/jobs/{job_id}").status_code == 401
    assert http2.get(f"/jobs/{job_id}", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = http2.get(f"/jobs/{job_id}", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["state"] == "SUCCESS"
    assert http2.get("/health").status_code == 200


@needs_redis
@pytest.mark.slow
def test_dataset_job_shards_files_and_a_failed_file_makes_it_partial(
    pool: WorkerPool,
    client: Any,
    root: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A dataset job with a corrupt image (and a symlink out of the roots) ends PARTIAL, and
    `deid wait` exits 3 as `deid batch` does; the files that could be done are written."""
    import cv2

    from deid.io import read_image, write_image
    from tests.conftest import SCENES

    src = root / "dataset"
    (src / "sub").mkdir(parents=True, exist_ok=True)
    astro = cv2.resize(read_image(SCENES / "astronaut_single_face.png"), (160, 160))
    write_image(src / "a.png", astro)
    write_image(src / "sub" / "b.jpg", astro[:, ::-1].copy())
    write_image(src / "c.png", np.full((64, 64, 3), 128, np.uint8))
    (src / "sub" / "broken.jpg").write_text("not an image")
    # a symlink in the folder to an image outside the storage roots: refused, never read
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    write_image(outside, astro)
    (src / "secret.png").symlink_to(outside)
    out = root / "dataset-out"
    sets = client.settings.model_copy(
        update={"service": client.settings.service.model_copy(update={"shard_files": 2})}
    )
    from deid.service.client import Client

    c2 = Client(sets)
    job_id = c2.submit(src, out)
    with pytest.raises(PartialFailure, match=r"broken\.jpg") as err:
        c2.wait(job_id, timeout=120)
    report = err.value.report
    assert err.value.exit_code == 3 and report == c2.result(job_id)
    st = c2.status(job_id)
    assert st["state"] == "PARTIAL" and st["progress"] == 1.0
    assert st["error"] == "2 of 5 files failed (see errors)"
    assert st["unit"] == "file" and st["chunks_total"] == 3 and st["frames_done"] == 5
    t = report["totals"]
    assert (t["files"], t["done"], t["failed"]) == (5, 3, 2)
    assert t["faces"] >= 2
    failed = {f["file"]: f["error"] for f in report["failed_inputs"]}
    assert set(failed) == {str(src / "secret.png"), str(src / "sub" / "broken.jpg")}
    assert "symlink" in failed[str(src / "secret.png")]
    assert any("broken.jpg" in e for e in st["errors"])
    for rel in ("a.png", "sub/b.jpg", "c.png", "manifest.csv"):
        assert (out / rel).is_file(), rel
    assert not (out / "sub" / "broken.jpg").exists() and not (out / "secret.png").exists()
    assert not np.array_equal(read_image(out / "a.png"), astro)  # the face was changed
    assert not _no_leftovers(out)
    # the HTTP API says PARTIAL and serves the report
    from fastapi.testclient import TestClient

    from deid.service.api import create_app

    http = TestClient(create_app(settings))
    assert http.get(f"/jobs/{job_id}").json()["state"] == "PARTIAL"
    rep = http.get(f"/jobs/{job_id}/report")
    assert rep.status_code == 200 and rep.json()["totals"]["failed"] == 2
    # `deid wait`: the summary line, then exit code 3 with the failed file (as `deid batch`)
    from deid.cli import main

    monkeypatch.setenv("DEID_BROKER_URL", URL)
    assert main(["wait", job_id, "--quiet"]) == 3
    captured = capsys.readouterr()
    assert f"{job_id} PARTIAL" in captured.out
    assert "2 input(s) failed" in captured.err and "broken.jpg" in captured.err


# --------------------------------------------------------------------------------------------
# bad inputs: Python, CLI and HTTP
# --------------------------------------------------------------------------------------------
def _bad_inputs(root: Path, clip: Path, outside: Path) -> dict[str, tuple[Any, ...]]:
    """name -> (input, output, overrides, error type, HTTP status, words in the message)."""
    (root / "bad").mkdir(exist_ok=True)
    text = root / "bad" / "notes.mp4"
    text.write_text("this is not a video\n")
    truncated = root / "bad" / "truncated.mp4"
    data = clip.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (outside / "v.mp4").write_bytes(data)
    link = root / "bad" / "escape"
    if not link.exists():
        link.symlink_to(outside)
    out = root / "bad" / "out.mp4"
    from deid.errors import VideoDecodeError

    return {
        "missing file": (root / "bad" / "nope.mp4", out, {}, InputError, 400, "not found"),
        "text named .mp4": (text, out, {}, VideoDecodeError, 400, "expected a video"),
        "truncated video": (truncated, out, {}, VideoDecodeError, 400, "expected a video"),
        "outside roots": (outside / "v.mp4", out, {}, PathPolicyError, 403, "outside"),
        "dot-dot": (root / "bad" / ".." / ".." / "v.mp4", out, {}, PathPolicyError, 403, ".."),
        "symlink out": (link / "v.mp4", out, {}, PathPolicyError, 403, "symlink"),
        "output outside": (clip, outside / "o.mp4", {}, PathPolicyError, 403, "outside"),
        "unknown attack": (
            clip,
            out,
            {"attack": {"name": "nope"}},
            ConfigError,
            422,
            "ifgsm",
        ),
        "invalid eps": (
            clip,
            out,
            {"attack": {"eps": 3.0}},
            ConfigError,
            422,
            "eps: Input should be less than or equal to 1",
        ),
    }


@needs_redis
def test_bad_inputs_are_refused_at_submission(
    redis_db: str,
    client: Any,
    clip: Path,
    root: Path,
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fastapi.testclient import TestClient

    from deid.cli import main
    from deid.config import load_settings
    from deid.service.api import create_app

    http = TestClient(create_app(settings))
    monkeypatch.setenv("DEID_BROKER_URL", URL)
    monkeypatch.setenv("DEID_STORAGE_ROOTS", str(root))
    before = len(client.jobs(1000))
    for name, (inp, out, over, err, code, words) in _bad_inputs(root, clip, tmp_path).items():
        # Python
        with pytest.raises(err, match=words.replace(".", r"\.")):
            job_settings = load_settings(overrides={**JOB_OVERRIDES, **over}) if over else None
            client.submit(inp, out, settings=job_settings)
        # HTTP
        r = http.post("/jobs", json={"input": str(inp), "output": str(out), "settings": over})
        assert r.status_code == code, (name, r.text)
        assert words in r.json()["detail"], (name, r.json())
        # CLI (the same main() as the `deid` command)
        argv = ["submit", str(inp), "-o", str(out)]
        if "attack" in over and "name" in over["attack"]:
            argv += ["--attack", over["attack"]["name"]]
        if "attack" in over and "eps" in over["attack"]:
            argv += ["--eps", str(over["attack"]["eps"])]
        assert main(argv) == 2, name
        msg = capsys.readouterr().err
        assert msg.startswith("deid: error:") and (words in msg or "unknown attack" in msg), (
            name,
            msg,
        )
    assert len(client.jobs(1000)) == before  # nothing was queued
    assert not (root / "bad" / "out.mp4").exists()


@needs_redis
@pytest.mark.slow
def test_a_video_unreadable_at_run_time_fails_its_job_with_the_reason(
    pool: WorkerPool, client: Any, clip: Path, root: Path
) -> None:
    from deid.service.client import JobFailed
    from deid.service.jobs import new_job

    src = root / "later" / "v.mp4"
    src.parent.mkdir(exist_ok=True)
    shutil.copy(clip, src)
    spec = new_job(src, root / "later" / "out.mp4", client.settings, client.settings.service)
    src.write_text("replaced by a text file after submission\n")
    job_id = client.enqueue(spec)
    with pytest.raises(JobFailed, match=r"split: .*v\.mp4.*expected a video"):
        client.wait(job_id, timeout=60)
    st = client.status(job_id)
    assert st["state"] == "FAILED" and "expected a video" in st["error"] and st["errors"]
    assert not (root / "later" / "out.mp4").exists()
    assert not _no_leftovers(root / "later")


# --------------------------------------------------------------------------------------------
# hardening: what the HTTP API accepts, reads and echoes
# --------------------------------------------------------------------------------------------
SECRET = "hunter2-not-for-your-eyes"


def _api(settings: Any, **service: Any) -> Any:
    from fastapi.testclient import TestClient

    from deid.service.api import create_app

    if service:
        svc = settings.service.model_copy(update=service)
        settings = settings.model_copy(update={"service": svc})
    return TestClient(create_app(settings))


def test_api_config_is_a_shipped_name_or_a_yaml_file_under_the_roots(
    settings: Any, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's ``config`` never opens a file of the server's working directory, and no error
    shows a config file's contents or a request's values."""
    http = _api(settings)
    monkeypatch.chdir(tmp_path)  # the server's working directory holds secrets
    (tmp_path / "secret").write_text(f"password: {SECRET}\n")
    (tmp_path / "secret.yaml").write_text(f"password: {SECRET}\n")
    (root / "cfg").mkdir(exist_ok=True)
    (root / "cfg" / "keys.yaml").write_text(f"password: {SECRET}\n")
    (root / "cfg" / "broken.yaml").write_text(f"attack: [{SECRET}\n")
    (root / "cfg" / "bad-device.yaml").write_text(f"pipeline: {{device: {SECRET}}}\n")
    (root / "cfg" / "notes.txt").write_text(f"password: {SECRET}\n")
    missing = str(root / "bad" / "nope.mp4")  # valid configs get as far as the input check
    out = str(root / "bad" / "out.mp4")

    def post(config: str, **extra: Any) -> Any:
        r = http.post("/jobs", json={"input": missing, "output": out, "config": config, **extra})
        assert SECRET not in r.text, (config, r.text)
        return r

    for name in ("secret", "secret.yaml", "./secret.yaml", "secret/../secret", "/etc/passwd"):
        r = post(name)
        assert r.status_code in (403, 422), (name, r.text)
        assert "celeba-cnn" in r.json()["detail"] or "storage roots" in r.json()["detail"]
    r = post(str(root / "cfg" / "notes.txt"))  # under a root, but not YAML: not read
    assert r.status_code == 422 and ".yaml" in r.json()["detail"], r.text
    r = post(str(root / "cfg" / "keys.yaml"))  # the key may be named, never its value
    assert r.status_code == 422 and "password" in r.json()["detail"], r.text
    r = post(str(root / "cfg" / "broken.yaml"))
    assert r.status_code == 422 and "not valid YAML" in r.json()["detail"], r.text
    assert re.search(r"line \d+, column \d+", r.json()["detail"])
    r = post(str(root / "cfg" / "bad-device.yaml"))
    assert r.status_code == 422 and "pipeline.device" in r.json()["detail"], r.text
    # the shipped names work (the job is then refused for its missing input, 400)
    for name in ("celeba-cnn", "default"):
        r = post(name)
        assert r.status_code == 400 and "not found" in r.json()["detail"], (name, r.text)
    # values of the request's own settings are not echoed either; the field and the rule are
    r = post("celeba-cnn", settings={"attack": {"eps": SECRET}})
    assert r.status_code == 422 and "attack.eps" in r.json()["detail"], r.text
    r = post("celeba-cnn", settings={"attack": {"name": SECRET}})
    assert r.status_code == 422 and "ifgsm" in r.json()["detail"], r.text
    r = post("celeba-cnn", settings={"service": {"storage_roots": ["/"]}})
    assert r.status_code == 422 and "service section" in r.text, r.text
    # FastAPI's own validation errors: where and what, never the value sent
    r = post("celeba-cnn", bogus=SECRET * 100)
    assert r.status_code == 422, r.text
    error = r.json()["detail"][0]
    assert error["loc"] == ["body", "bogus"] and "input" not in error


def test_api_limits_request_size_and_string_lengths(settings: Any, root: Path) -> None:
    http = _api(settings)
    body = {"input": str(root / "bad" / "nope.mp4"), "output": str(root / "bad" / "o.mp4")}
    # over service.max_request_bytes (1 MiB): 413 before the body is parsed or echoed
    big = {**body, "settings": {"pipeline": {"device": SECRET * 60_000}}}
    r = http.post("/jobs", json=big)
    assert r.status_code == 413 and SECRET not in r.text, r.text[:300]
    assert "1048576" in r.json()["detail"]
    # the limit is a setting
    small = _api(settings, max_request_bytes=2048)
    r = small.post("/jobs", json={**body, "settings": {"attack": {"target": "x" * 3000}}})
    assert r.status_code == 413, r.text[:300]
    # every string field is capped: 422 naming the field, without its value
    for field, value in (
        ("input", "/" + "a" * 5000),
        ("output", "/" + "b" * 5000),
        ("config", "c" * 5000),
    ):
        r = http.post("/jobs", json={**body, field: value})
        assert r.status_code == 422, (field, r.text[:300])
        assert r.json()["detail"][0]["loc"] == ["body", field] and value not in r.text
    # settings: bounded depth, size and string lengths
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node = node.setdefault("a", {})
    long_value = {"attack": {"target": "t" * 5000}}
    many = {f"k{i}": i for i in range(2000)}
    for bad in (deep, long_value, many):
        r = http.post("/jobs", json={**body, "settings": bad})
        assert r.status_code == 422 and "settings" in r.text, r.text[:300]
        assert "t" * 5000 not in r.text
    # query parameters too
    assert http.get("/jobs", params={"limit": 10**9}).status_code == 422


def test_nul_bytes_and_overlong_paths_are_refused_with_a_message(
    settings: Any,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from deid.cli import main

    ok = str(root / "bad" / "out.mp4")
    long_name = str(root / ("n" * 300 + ".mp4"))  # one component over NAME_MAX
    long_path = str(root / "/".join(["d" * 200] * 21))  # over PATH_MAX (4096)
    cases = {
        "nul": str(root / "a\x00b.mp4"),
        "long name": long_name,
        "long path": long_path,
        "surrogate": str(root / "a\udcff\ud800.mp4"),
    }
    for name, path in cases.items():
        with pytest.raises(PathPolicyError) as err:
            check_path(path, [root])
        assert err.value.exit_code == 2, name
    http = _api(settings)
    for name, path in cases.items():
        for body in ({"input": path, "output": ok}, {"input": ok, "output": path}):
            r = http.post(
                "/jobs", content=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            assert r.status_code in (400, 422), (name, r.status_code, r.text[:300])
            assert re.search(r"NUL|too long|at most|encoding|unicode", r.text), (name, r.text[:300])
    r = http.post("/jobs", json={"input": ok, "output": ok, "config": "/x\x00.yaml"})
    assert r.status_code == 400 and "NUL" in r.json()["detail"], r.text
    # the CLI the same (exit 2 with the reason, no traceback)
    monkeypatch.setenv("DEID_BROKER_URL", URL)
    monkeypatch.setenv("DEID_STORAGE_ROOTS", str(root))
    for path in (long_name, long_path):
        assert main(["submit", path, "-o", ok]) == 2
        err = capsys.readouterr().err
        assert err.startswith("deid: error:") and "long" in err, err[-300:]
    assert main(["submit", ok, "-o", long_path]) == 2
    assert "long" in capsys.readouterr().err


def test_job_ids_are_checked_before_they_become_keys(
    settings: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from deid.cli import main
    from deid.service.jobs import JobSpec
    from deid.service.state import JobStore

    http = _api(settings)
    for bad in ("x:running", "*", "0" * 31 + ":", "a" * 33, "../" + "0" * 32):
        for method in ("get", "delete"):
            r = getattr(http, method)(f"/jobs/{bad}")
            assert r.status_code in (404, 422), (bad, method, r.status_code, r.text)
        assert http.get(f"/jobs/{bad}/report").status_code in (404, 422), bad
    store = JobStore(URL)
    with pytest.raises(DeidError, match="job id"):
        store.get("x:running")
    monkeypatch.setenv("DEID_BROKER_URL", URL)
    assert main(["status", "x:*"]) == 2
    assert "job id" in capsys.readouterr().err
    # a spec carries its id, and its work folder is the one the id names
    good = {
        "id": "0" * 32,
        "kind": "video",
        "input": "/r/a.mp4",
        "output": "/r/o.mp4",
        "workdir": "/r/.deid-job-" + "0" * 32,
        "settings": {},
    }
    JobSpec(**good)
    for change in ({"workdir": "/"}, {"id": "../x", "workdir": "/r/.deid-job-../x"}):
        with pytest.raises(ValueError):
            JobSpec(**{**good, **change})


# --------------------------------------------------------------------------------------------
# hardening: redeliveries (the Engine on real Redis, no workers)
# --------------------------------------------------------------------------------------------
@needs_redis
def test_late_duplicates_of_a_done_chunk_are_skipped_not_counted_and_queue_nothing(
    redis_db: str, root: Path, settings: Any
) -> None:
    """After a worker was taken for dead, its chunk may arrive again once done (the slow
    worker finished after all, or the broker restores the message late): such a delivery
    checks the chunk and moves on. It never fails the job as a poison chunk, and the next
    stage is queued once."""
    import uuid

    from deid.service.jobs import Engine, JobSpec, initial_fields, job_settings
    from deid.service.state import JobStore
    from deid.service.storage import work_dir, write_json

    store = JobStore(redis_db)
    job_id = uuid.uuid4().hex
    src, out = root / "dup-in", root / "dup-out"
    src.mkdir(exist_ok=True)
    spec = JobSpec(
        id=job_id,
        kind="dataset",
        input=str(src),
        output=str(out),
        workdir=str(work_dir(out, job_id)),
        settings=job_settings(settings),
        max_deliveries=2,
    )
    store.create(job_id, initial_fields(spec))
    store.update(job_id, state="RUNNING", chunks_total=2, frames_total=2)
    work = Path(spec.workdir)
    write_json(work / "shards.json", [["a.png"], ["b.png"]])
    row = {"path": "a.png", "status": "done", "faces": 0, "deidentified": 0, "obscured": 0}
    for i in (0, 1):
        write_json(work / "shards" / f"{i:05d}.json", [row])  # computed before
    queued: list[tuple[str, int]] = []
    engine = Engine(store, lambda stage, sp, i: queued.append((stage, i)), lambda sp: None)
    assert engine.run("shard", spec, 0) == "done"  # the first delivery: shard 0 done
    for _ in range(4):  # then again and again, more often than max_deliveries
        assert engine.run("shard", spec, 0) == "done"
    assert store.state(job_id) == "RUNNING" and not store.get(job_id)["errors"]
    assert store.get(job_id)["chunks_done"] == 1 and queued == []
    assert engine.run("shard", spec, 1) == "done"  # the last shard queues collect...
    assert engine.run("shard", spec, 1) == "done"  # ...and its duplicate does not, again
    assert queued == [("collect", 0)]
    assert store.get(job_id)["chunks_done"] == 2 and store.running(job_id) == {}
    # a late finisher does not remove the running entry of the delivery that took over
    store.set_running(job_id, "shard:0", "dead-host:1:1.0", "task-a")
    store.set_running(job_id, "shard:0", "live-host:2:2.0", "task-b")
    assert not store.clear_running(job_id, "shard:0", "dead-host:1:1.0")
    assert store.running(job_id) == {"shard:0": "live-host:2:2.0"}
    assert store.running_task(job_id, "shard:0") == "task-b"
    assert store.clear_running(job_id, "shard:0", "live-host:2:2.0")
    assert store.running(job_id) == {} and job_id not in store.running_jobs()


# --------------------------------------------------------------------------------------------
# deployment files
# --------------------------------------------------------------------------------------------
def _compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin), else Debian's ``docker-compose`` (v1.29), else None."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_file_validates() -> None:
    compose = _compose_command()
    if compose is None:
        pytest.skip("no docker compose client")
    base = [*compose, "-f", str(REPO / "docker-compose.yml")]
    r = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*base, "--profile", "monitoring", "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert set(r.stdout.split()) == {"redis", "worker", "api", "flower"}, r.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_refuses_an_api_without_token_off_loopback(root: Path, tmp_path: Path) -> None:
    import http.client

    port = _free_port()
    env = worker_env(URL, root)
    cmd = [sys.executable, "-m", "deid.cli", "serve", "--port", str(port), "--host", "0.0.0.0"]
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "without a token" in r.stderr and "--insecure" in r.stderr
    # --insecure: it serves, and warns
    log = tmp_path / "serve.log"
    env["DEID_SERVICE__MAX_REQUEST_BYTES"] = "4096"
    with log.open("wb") as f:
        p = subprocess.Popen([*cmd, "--insecure"], env=env, cwd=REPO, stdout=f, stderr=f)
    try:

        def answers() -> bool:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/openapi.json")
                return c.getresponse().status == 200
            except OSError:
                return False

        wait_for(answers, 60, "deid serve --insecure to answer", poll=0.3)
        # a chunked body (no Content-Length) over service.max_request_bytes: 413
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        chunks = (b'{"input": "' + b"x" * 1000 for _ in range(8))
        c.request(
            "POST",
            "/jobs",
            body=chunks,
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        resp = c.getresponse()
        assert resp.status == 413, resp.read()[:300]
        assert b"4096" in resp.read()
    finally:
        p.terminate()
        p.wait(timeout=20)
    text = log.read_text()
    assert "has no token" in text and "--insecure" in text, text[-2000:]
    from deid.service.cli import is_loopback

    for host in ("127.0.0.1", "127.4.5.6", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.org", ""):
        assert not is_loopback(host), host


def test_worker_and_compose_defaults_agree() -> None:
    """The compose file runs the documented commands (parsed as YAML; no engine needed)."""
    import yaml

    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    s = doc["services"]
    assert "noeviction" in " ".join(map(str, s["redis"]["command"]))
    assert "--save" in s["redis"]["command"]
    assert s["worker"]["command"][:2] == ["deid", "worker"]
    devices = s["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "container_name" not in s["worker"]  # --scale worker=N needs unnamed containers
    assert s["api"]["command"][:2] == ["deid", "serve"]
    # the API listens on every interface: with a token, or not at all (no --insecure here)
    assert "--insecure" not in s["api"]["command"]
    assert "0.0.0.0" in s["api"]["command"]
    assert doc["x-deid"]["environment"]["DEID_SERVICE__TOKEN"] == "${DEID_TOKEN:-}"
    assert s["flower"]["profiles"] == ["monitoring"]
