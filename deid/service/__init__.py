"""The job service: job steps (``jobs``), Redis job state (``state``), storage policy
(``storage``), the Python client (``client``), the Celery app factory (``celery_app``), the
HTTP API (``api``) and the CLI (``cli``). The workers that run the steps live in ``workers/``."""
