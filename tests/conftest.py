"""Shared fixtures: the real servers (SeaweedFS S3, Prometheus) from ``helpers/servers.py``; helpers live in ``helpers/``."""

from helpers.servers import prometheus_factory, s3_bucket, s3_env, s3_server  # noqa: F401 - fixtures, used by name
