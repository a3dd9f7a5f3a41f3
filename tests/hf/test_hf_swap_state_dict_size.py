"""The state dict of a swapped model holds compact tensors: no view of a whole unpacked
matrix (or of the concatenated q/k/v bias) per projection."""

import pytest
import torch
from _hf_swap_helpers import pruned_model

from restorelcc.hf.swap import swap_attention


@pytest.mark.parametrize("name", ["qwen2-gqa", "llama-gqa"])  # q/k/v biases; none
def test_each_saved_tensor_owns_just_its_own_elements(name):
    model = pruned_model(name, "unstructured", mlp=True)
    plain = {key: value.clone() for key, value in model.state_dict().items()}
    swap_attention(model, mlp=True)
    state = model.state_dict()
    assert state.keys() == plain.keys()
    for key, value in state.items():
        assert value.untyped_storage().nbytes() == value.numel() * value.element_size(), key
        assert torch.equal(value, plain[key]), key
