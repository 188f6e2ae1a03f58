# deid worker / API image. CUDA comes with the torch wheel (pinned in pyproject.toml); the
# host needs the NVIDIA driver and the NVIDIA container toolkit for GPU workers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY deid ./deid
COPY workers ./workers
COPY configs ./configs
# editable: configs/ stays beside the package; flower serves the optional dashboard
RUN pip install -e . flower \
    && useradd --create-home --uid 1000 deid
USER deid
# CMD is set per service in docker-compose.yml (deid worker | deid serve | celery flower)
CMD ["deid", "worker"]
