"""Fixtures of the learning-core tests."""

from __future__ import annotations

import pytest

from bcoder_core.model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    """The tiny byte-level tokenizer: small vocabulary, so the random models stay small."""
    return load_tokenizer("tiny")
