"""Fixtures of the tests/hf tests: a folder holding a tiny 2:4-pruned model with its
tokenizer, as ``restorelcc bench`` loads it."""

import pytest
from _hf_swap_helpers import prune_attention

from restorelcc.testing import save_checkpoint, tiny_model


@pytest.fixture
def pruned_dir(tmp_path):
    return save_checkpoint(prune_attention(tiny_model("llama-gqa"), "2:4"), tmp_path / "pruned")
