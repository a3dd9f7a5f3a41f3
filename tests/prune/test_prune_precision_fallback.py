"""parameters_in casts a parameter registered under a new name inside the block (one the
caller added meanwhile) back to the dtype of the first parameter it cast, the model's,
not to the block's compute dtype."""

import torch

from restorelcc.prune.precision import parameters_in


def test_a_parameter_new_in_the_block_goes_back_to_the_first_cast_dtype():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    module[0].bfloat16()  # the LayerNorm stays float32: not cast, not the fallback
    with parameters_in(module):
        assert module[0].weight.dtype == torch.float32
        module[1].register_parameter("extra", torch.nn.Parameter(torch.ones(4)))
    assert module[1].extra.dtype == torch.bfloat16
    assert torch.equal(module[1].extra, torch.ones(4, dtype=torch.bfloat16))
    assert [p.dtype for p in module[0].parameters()] == [torch.bfloat16, torch.bfloat16]
    assert [p.dtype for p in module[1].parameters()] == [torch.float32] * 2 + [torch.bfloat16]
