"""Fixtures of the cross-device tests."""

import pytest

from restorelcc.testing import byte_tokenizer


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()
