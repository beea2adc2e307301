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


class ConfigValueError(ConfigError):
    """A value out of range, raised by a config's ``__post_init__``; the loader adds where and the key path.

    ``str()`` of the bare error is ``"<key> <message>"`` (e.g. ``workers must be >= 1 (got 0)``), so it
    also reads well when a config is built in code rather than loaded.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key} {message}")
        self.key = key
        self.message = message


def check(ok: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigValueError` for field ``key`` unless ``ok`` (for ``__post_init__``)."""
    if not ok:
        raise ConfigValueError(key, message)
