"""The job service: Redis job state, storage policy, job steps, HTTP API and CLI."""
