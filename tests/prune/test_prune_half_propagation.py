"""A half-precision model's next block is calibrated on the inputs its pruned block gives as
the model holds it: SparseGPT's updated float32 weights rounded to the model's dtype (the
saved checkpoint's values), not the float32 values before that rounding. The reference
propagates through the weights it has cast back."""

import pytest
import torch

import restorelcc.prune.api as api
from restorelcc.hf.families import decoder_layers
from restorelcc.prune import prune_model
from restorelcc.prune.calibrate import capture_block_inputs, run_block
from restorelcc.prune.precision import capture_in_float32, parameters_in
from restorelcc.testing import tiny_model

TOKENS = torch.randint(0, 259, (4, 16), generator=torch.Generator().manual_seed(0))


def recording_walk(monkeypatch) -> dict[int, list[torch.Tensor]]:
    """Record the calibration inputs ``prune_model`` hands each block."""
    seen: dict[int, list[torch.Tensor]] = {}
    real_walk = api.walk_blocks

    def walk(*args, **kwargs):
        for step in real_walk(*args, **kwargs):
            seen[step.index] = [hidden.clone() for hidden in step.inputs]
            yield step

    monkeypatch.setattr(api, "walk_blocks", walk)
    return seen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_the_next_block_sees_the_weights_as_saved(monkeypatch, dtype, pattern):
    model = tiny_model("llama-gqa").to(dtype)
    seen = recording_walk(monkeypatch)
    prune_model(model, "sparsegpt", 0.5, pattern, TOKENS, chunk_size=3, progress=False)
    assert {p.dtype for p in model.parameters()} == {dtype}

    # block 0's outputs from the model as pruned and held (what save_pretrained writes)
    with capture_in_float32(model):
        chunks, block_kwargs = capture_block_inputs(model, TOKENS, chunk_size=3)
    first = decoder_layers(model)[0]
    with parameters_in(first):
        expected = run_block(first, chunks, block_kwargs[0])
    assert len(seen[1]) == len(expected)
    for got, want in zip(seen[1], expected, strict=True):
        assert torch.equal(got, want)
