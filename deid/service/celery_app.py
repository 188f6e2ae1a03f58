"""The Celery application of the job service: broker and result backend from deid's settings,
safe defaults. Clients build one to queue jobs; ``workers.celery_app`` builds the workers' one.

Defaults that matter for long GPU chunks:

- JSON only (no pickle): task messages carry a job spec and a chunk index, never frames;
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a chunk is acknowledged when it is
  done, so a chunk whose worker dies is delivered again (prefork child: at once; a whole
  worker, solo pool or machine: once its heartbeat expires, ``service.heartbeat_ttl``, when
  a sweeping worker puts its message back, see :func:`deid.service.jobs.reclaim_dead_steps`;
  Redis' visibility timeout remains the last resort). The service counts deliveries per chunk
  and fails a job whose chunk keeps killing workers (``service.max_deliveries``);
- ``worker_prefetch_multiplier=1``: a worker holds one chunk at a time;
- the Redis visibility timeout is longer than the hard time limit, so a running chunk is
  never handed to a second worker while the first is still allowed to work on it;
- soft and hard time limits, ``worker_max_memory_per_child``.

An app made without settings computes its configuration lazily from
:func:`deid.config.load_settings` (environment ``DEID_BROKER_URL``, ``DEID_SERVICE__...``) the
first time it is needed; ``deid worker`` configures the workers' app explicitly from its
``--config``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from deid.config import ServiceConfig

QUEUE = "deid"


def celery_config(svc: ServiceConfig) -> dict[str, Any]:
    """Celery settings for the service section of deid's settings."""
    transport = {
        "visibility_timeout": svc.visibility_timeout,
        # sweep for a dead worker's chunks this often (kombu's default is ~100 s)
        "unacked_restore_interval": svc.restore_interval,
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": svc.broker_url,
        "result_backend": svc.result_backend or svc.broker_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": svc.soft_time_limit,
        "task_time_limit": svc.time_limit,
        "worker_max_memory_per_child": svc.max_memory_per_child,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": svc.visibility_timeout},
        "result_expires": svc.job_ttl,
        "task_ignore_result": True,  # job state lives in deid's own Redis keys
        "task_default_queue": QUEUE,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # ride out a broker restart
        "worker_send_task_events": True,  # flower
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        # read by workers.tasks: the job state's TTL, heartbeats and sweeps, work folders
        "deid_job_ttl": svc.job_ttl,
        "deid_heartbeat_interval": svc.heartbeat_interval,
        "deid_heartbeat_ttl": svc.heartbeat_ttl,
        "deid_orphan_sweep_interval": svc.orphan_sweep_interval,
        "deid_storage_roots": [str(r) for r in svc.storage_roots],
    }


def make_app(
    svc: ServiceConfig | None = None, name: str = "deid", include: tuple[str, ...] = ()
) -> Celery:
    """A Celery app for ``svc`` (or, lazily, for the settings of the environment)."""
    app = Celery(name, include=list(include))
    if svc is not None:
        app.conf.update(celery_config(svc))
    else:

        def defaults() -> dict[str, Any]:
            from deid.config import load_settings

            return celery_config(load_settings().service)

        app.add_defaults(defaults)
    return app
