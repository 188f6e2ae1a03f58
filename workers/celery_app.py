"""The workers' Celery app (``celery -A workers.celery_app worker``): :func:`make_app` of
:mod:`deid.service.celery_app` with the tasks of :mod:`workers.tasks`; ``deid worker``
configures it from its ``--config``, plain ``celery`` from the environment's settings."""

from __future__ import annotations

from celery import Celery

from deid.config import ServiceConfig
from deid.service.celery_app import celery_config, make_app

__all__ = ["app", "configure"]


def configure(svc: ServiceConfig) -> Celery:
    """Point the worker app at ``svc`` (before the worker starts)."""
    app.conf.update(celery_config(svc))
    return app


app = make_app(include=("workers.tasks",))
