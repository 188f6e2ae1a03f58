"""Job state in Redis: one hash per job, with a TTL, that outlives any client.

Keys (``deid:`` prefix): ``job:<id>`` (hash: state, stage, paths, counters, error, report),
``job:<id>:done:<stage>`` (set of finished chunk indices), ``job:<id>:deliveries`` (hash:
deliveries per chunk), ``job:<id>:running`` (hash: which worker holds which chunk, as
``host:pid:start``), ``job:<id>:tasks`` (hash: the Celery task id of each running chunk),
``job:<id>:errors`` (list), ``job:<id>:flag:<name>`` (once-only transitions), ``jobs``
(sorted set of job ids by creation time), ``running`` (set of the jobs with running chunks),
``worker:<host>:<pid>`` (a running step's heartbeat, with a short TTL) and ``lock:<name>``
(one sweeper at a time). Every write of a job's keys refreshes their TTL.

A job id is 32 lowercase hex digits (a uuid4); any other id is refused before it becomes part
of a key (``x:running`` would name another key).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from deid.errors import DeidError

# Finished: every output written (PARTIAL: a dataset job some of whose files failed).
DONE = ("SUCCESS", "PARTIAL")
TERMINAL = (*DONE, "FAILED", "CANCELLED")
JOB_ID = re.compile(r"[0-9a-f]{32}")
JSON_FIELDS = ("spec", "report")
INT_FIELDS = (  # a job's counters: frames (files) and chunks, by stage
    "frames_total",
    "frames_analysed",
    "frames_done",
    "chunks_total",
    "chunks_analysed",
    "chunks_done",
)

# Set fields only while the job exists and is not finished: -1 lost, 0 finished, 1 set.
_UPDATE = """
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return -1 end
if s == 'SUCCESS' or s == 'PARTIAL' or s == 'FAILED' or s == 'CANCELLED' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

# Remove a running entry only if it is still the one given (a late finisher or a sweeper must
# not remove the entry of the delivery that took over): 1 removed, 0 not.
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[3]) end
return 1
"""

# Drop a job from the set of jobs with running chunks if it has none (atomically).
_FORGET = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
"""


class BadJobId(DeidError):
    """A string that cannot be a job id (32 hex digits)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        shown = job_id if len(job_id) <= 40 and job_id.isprintable() else f"{job_id[:40]!r}..."
        super().__init__(f"{shown}: not a job id; expected 32 hex digits (as `deid submit` prints)")


def check_job_id(job_id: str) -> str:
    """``job_id`` if it is one (32 lowercase hex digits).

    Raises:
        BadJobId: anything else (it would become part of Redis keys and of a folder name).
    """
    if not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id)):
        raise BadJobId(str(job_id))
    return job_id


class JobNotFound(DeidError):
    """No job with this id in Redis: never submitted, expired, or the broker lost its data."""

    exit_code = 4

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id} not found in Redis: unknown id, expired after the job TTL, or the "
            "broker lost its data (restarted without persistence)"
        )


class BrokerUnavailable(DeidError):
    """Redis cannot be reached."""

    exit_code = 5


def connect(url: str) -> redis.Redis:
    """A Redis client that rides out a short broker restart (retries for about 15 s)."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 12),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


class JobStore:
    """Reads and writes job state in Redis.

    Args:
        url: Redis URL (the broker's).
        ttl: seconds a job's keys live after their last write.
    """

    def __init__(self, url: str, ttl: int = 7 * 86400, prefix: str = "deid") -> None:
        self.url = url
        self.ttl = ttl
        self.prefix = prefix
        self.r = connect(url)
        self._update = self.r.register_script(_UPDATE)
        self._release = self.r.register_script(_RELEASE)
        self._forget = self.r.register_script(_FORGET)

    # keys ---------------------------------------------------------------------------------
    def key(self, job_id: str, *parts: str) -> str:
        """The Redis key of a job's ``parts`` (``job_id`` checked: see :func:`check_job_id`)."""
        return ":".join((self.prefix, "job", check_job_id(job_id), *parts))

    # jobs ---------------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            return bool(connect_fast(self.url).ping())
        except redis.RedisError:
            return False

    def create(self, job_id: str, fields: dict[str, Any]) -> None:
        now = time.time()
        data = {"id": job_id, "state": "PENDING", "created": now, "updated": now, **fields}
        k = self.key(job_id)
        with self._guard():
            pipe = self.r.pipeline()
            pipe.hset(k, mapping={f: _enc(v) for f, v in data.items()})
            pipe.expire(k, self.ttl)
            pipe.zadd(f"{self.prefix}:jobs", {job_id: now})
            pipe.zremrangebyscore(f"{self.prefix}:jobs", 0, now - self.ttl)
            pipe.execute()

    def get(self, job_id: str) -> dict[str, Any]:
        """The job's fields (JSON and counters decoded), ``errors`` and ``running`` added.

        Raises:
            JobNotFound: no such job.
        """
        with self._guard():
            pipe = self.r.pipeline()
            pipe.hgetall(self.key(job_id))
            pipe.lrange(self.key(job_id, "errors"), 0, -1)
            pipe.hgetall(self.key(job_id, "running"))
            raw, errors, running = pipe.execute()
        if not raw:
            raise JobNotFound(job_id)
        out: dict[str, Any] = dict(raw)
        for f in JSON_FIELDS:
            out[f] = json.loads(out[f]) if out.get(f) else None
        for f in INT_FIELDS:
            if f in out:
                out[f] = int(out[f])
        for f in ("created", "updated"):
            if f in out:
                out[f] = float(out[f])
        out["errors"] = errors
        out["running"] = running
        return out

    def state(self, job_id: str) -> str | None:
        with self._guard():
            return self.r.hget(self.key(job_id), "state")  # type: ignore[return-value]

    def update(self, job_id: str, **fields: Any) -> int:
        """Set fields of a running job. Returns 1, 0 (job already finished) or -1 (lost)."""
        fields["updated"] = time.time()
        args: list[Any] = [self.ttl]
        for f, v in fields.items():
            args += [f, _enc(v)]
        with self._guard():
            return int(self._update(keys=[self.key(job_id)], args=args))

    def finish(self, job_id: str, state: str, **fields: Any) -> bool:
        """Move a job to a final state, unless it is in one already. Returns whether it moved."""
        assert state in TERMINAL, state
        return self.update(job_id, state=state, stage=state.lower(), **fields) == 1

    def incr(self, job_id: str, **counts: int) -> None:
        with self._guard():
            pipe = self.r.pipeline()
            for f, n in counts.items():
                pipe.hincrby(self.key(job_id), f, n)
            pipe.expire(self.key(job_id), self.ttl)
            pipe.execute()

    def add_error(self, job_id: str, message: str) -> None:
        k = self.key(job_id, "errors")
        with self._guard():
            pipe = self.r.pipeline()
            pipe.rpush(k, message)
            pipe.ltrim(k, -100, -1)
            pipe.expire(k, self.ttl)
            pipe.execute()

    def list(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent jobs, newest first (jobs whose state expired are dropped)."""
        with self._guard():
            ids = self.r.zrevrange(f"{self.prefix}:jobs", 0, limit - 1)
        out = []
        for job_id in ids:
            try:
                out.append(self.get(job_id))
            except (JobNotFound, BadJobId):
                with self._guard():
                    self.r.zrem(f"{self.prefix}:jobs", job_id)
        return out

    # chunks -------------------------------------------------------------------------------
    def delivery(self, job_id: str, stage: str, index: int) -> int:
        """Count one more delivery of a chunk; returns the count (1 the first time)."""
        k = self.key(job_id, "deliveries")
        with self._guard():
            pipe = self.r.pipeline()
            pipe.hincrby(k, f"{stage}:{index}", 1)
            pipe.expire(k, self.ttl)
            return int(pipe.execute()[0])

    def mark_done(self, job_id: str, stage: str, index: int) -> tuple[bool, int]:
        """Record a finished chunk. Returns (first time, number of chunks of the stage done)."""
        k = self.key(job_id, "done", stage)
        with self._guard():
            pipe = self.r.pipeline()
            pipe.sadd(k, index)
            pipe.scard(k)
            pipe.expire(k, self.ttl)
            added, count, _ = pipe.execute()
        return bool(added), int(count)

    def once(self, job_id: str, name: str) -> bool:
        """True the first time it is called for ``name`` (a transition that must happen once)."""
        with self._guard():
            return bool(self.r.set(self.key(job_id, "flag", name), 1, nx=True, ex=self.ttl))

    def is_done(self, job_id: str, stage: str, index: int) -> bool:
        """Whether a chunk of ``stage`` was recorded as finished (:meth:`mark_done`)."""
        with self._guard():
            return bool(self.r.sismember(self.key(job_id, "done", stage), index))

    def flag(self, job_id: str, name: str) -> bool:
        """Whether :meth:`once` was called for ``name``."""
        with self._guard():
            return bool(self.r.exists(self.key(job_id, "flag", name)))

    def set_running(self, job_id: str, what: str, who: str, task: str | None = None) -> None:
        """Record that ``who`` (``host:pid:start``) runs ``what`` (``stage:index``), as the
        queue's message ``task`` (its Celery task id), until :meth:`clear_running`."""
        k, tasks = self.key(job_id, "running"), self.key(job_id, "tasks")
        with self._guard():
            pipe = self.r.pipeline()
            pipe.hset(k, what, who)
            pipe.expire(k, self.ttl)
            if task:
                pipe.hset(tasks, what, task)
                pipe.expire(tasks, self.ttl)
            else:
                pipe.hdel(tasks, what)
            pipe.sadd(f"{self.prefix}:running", job_id)
            pipe.execute()

    def clear_running(self, job_id: str, what: str, who: str | None = None) -> bool:
        """Remove the running entry of ``what`` (only if ``who`` still holds it, when given).
        Returns whether it was removed."""
        k = self.key(job_id, "running")
        with self._guard():
            if who is None:
                who = self.r.hget(k, what)  # type: ignore[assignment]
                if who is None:
                    return False
            keys = [k, self.key(job_id, "tasks"), f"{self.prefix}:running"]
            return bool(self._release(keys=keys, args=[what, who, job_id]))

    def running(self, job_id: str) -> dict[str, str]:
        """``stage:index`` -> ``host:pid:start`` of the chunks running now."""
        with self._guard():
            return self.r.hgetall(self.key(job_id, "running"))  # type: ignore[return-value]

    def running_task(self, job_id: str, what: str) -> str | None:
        """The Celery task id of a running chunk (None if unknown)."""
        with self._guard():
            return self.r.hget(self.key(job_id, "tasks"), what)  # type: ignore[return-value]

    def running_jobs(self) -> list[str]:
        """Ids of the jobs that have (or recently had) running chunks."""
        with self._guard():
            return sorted(self.r.smembers(f"{self.prefix}:running"))  # type: ignore[arg-type]

    def forget_if_idle(self, job_id: str) -> None:
        """Drop a job from :meth:`running_jobs` if it has no running entry left."""
        with self._guard():
            self._forget(
                keys=[self.key(job_id, "running"), f"{self.prefix}:running"], args=[job_id]
            )

    # workers ------------------------------------------------------------------------------
    def heartbeat(self, holder: str, ttl: float) -> None:
        """``holder`` (``host:pid``) is alive for the next ``ttl`` seconds."""
        with self._guard():
            self.r.set(f"{self.prefix}:worker:{holder}", f"{time.time():.3f}", px=int(ttl * 1000))

    def alive(self, holder: str) -> bool:
        """Whether ``holder`` sent a heartbeat within its TTL."""
        with self._guard():
            return bool(self.r.exists(f"{self.prefix}:worker:{holder}"))

    def lock(self, name: str, seconds: float) -> bool:
        """True for one caller per ``seconds`` (the sweeps: one worker acts at a time)."""
        with self._guard():
            return bool(
                self.r.set(f"{self.prefix}:lock:{name}", 1, nx=True, px=int(seconds * 1000))
            )

    def flush(self) -> None:
        """Delete every deid key of this database (tests)."""
        with self._guard():
            for k in self.r.scan_iter(f"{self.prefix}:*"):
                self.r.delete(k)

    # errors -------------------------------------------------------------------------------
    def _guard(self) -> _Guard:
        return _Guard(self.url)


class _Guard:
    """Turns Redis connection errors into :class:`BrokerUnavailable` with the URL."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            raise BrokerUnavailable(f"cannot reach Redis at {safe_url(self.url)}: {exc}") from exc
        return False


def connect_fast(url: str) -> redis.Redis:
    """A client that fails at once (health checks)."""
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)


def safe_url(url: str) -> str:
    """The URL without a password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _enc(v: Any) -> str | int | float:
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    if isinstance(v, bool):
        return int(v)
    if v is None:
        return ""
    return v  # type: ignore[no-any-return]
