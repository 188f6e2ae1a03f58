"""Celery workers of the deid service (``deid worker``; ``celery -A workers.celery_app worker``):
a thin shell over :mod:`deid.service`. ``celery_app`` builds the workers' app; ``tasks`` runs
each job step of :class:`deid.service.jobs.Engine`. The library imports it only to start a
worker (``deid worker``)."""
