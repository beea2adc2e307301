"""Errors a user can cause. Each carries one line that says what went wrong and where."""

from __future__ import annotations


class BcoderError(Exception):
    """A user-facing error: bad input, missing artifact, wrong configuration.

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    """


class ArtifactNotFound(BcoderError):
    """An artifact prefix has no manifest (it does not exist for readers)."""


class ArtifactCorrupt(BcoderError):
    """An artifact's files disagree with its manifest (size or sha256)."""


class ConfigError(BcoderError):
    """A configuration file or override is invalid."""
