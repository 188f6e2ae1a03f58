"""Celery workers of the deid service (``deid worker``; ``celery -A workers.celery_app worker``)."""
