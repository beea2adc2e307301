"""Shared fixtures. The real-server fixtures (SeaweedFS S3, Prometheus) live in ``tests/servers.py``."""

from servers import prometheus_factory, s3_bucket, s3_env, s3_server  # noqa: F401 - fixtures, used by name
