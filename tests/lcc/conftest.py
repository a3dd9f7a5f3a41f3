"""Fixtures for the RestoreLCC tests: tiny dense/pruned model pairs and synthetic pairs."""

import pytest
from lcc_helpers import pruned_copy, save_restore_inputs

from restorelcc.testing import byte_tokenizer, synthetic_pairs, tiny_model


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def models():
    """(dense, pruned) llama-3x5: 3 layers x 5 heads x 1 KV head, hidden 60 != 5 * 16."""
    dense = tiny_model("llama-3x5")
    return dense, pruned_copy(dense)


@pytest.fixture
def pairs():
    return synthetic_pairs()


@pytest.fixture
def restore_checkpoints(tmp_path):
    """(tmp_path, pruned model): the inputs ``restore_argv(tmp_path)`` names."""
    return tmp_path, save_restore_inputs(tmp_path)
