"""One short check on the real default model (two of its 30 layers, to stay fast)."""

import pytest
import torch

from restorelcc.hf.families import decoder_layers
from restorelcc.prune import prune_model


@pytest.mark.slow
def test_smollm2_two_layers_magnitude_24_and_wanda():
    from restorelcc.assets import load_model

    model, _ = load_model("smollm2-135m")
    layers = decoder_layers(model)
    del layers[2:]
    model.config.num_hidden_layers = 2
    dense = {k: v.clone() for k, v in layers.state_dict().items()}

    report = prune_model(model, "magnitude", 0.5, "2:4")
    assert len(report.matrices) == 14
    # the 4-bit-grid weights hold a few exact zeros already, so a group may keep only one
    assert all(m.nm["2:4"] and 0.5 <= m.sparsity < 0.501 for m in report.matrices)
    # ...and many ties: the kept weights of every group are still the largest
    q, dense_q = layers[0].self_attn.q_proj.weight, dense["0.self_attn.q_proj.weight"]
    groups_q, groups_dense = q.reshape(576, -1, 4), dense_q.reshape(576, -1, 4)
    kept_min = groups_dense.abs().masked_fill(groups_q == 0, float("inf")).amin(dim=2)
    dropped_max = groups_dense.abs().masked_fill(groups_q != 0, -1.0).amax(dim=2)
    assert (kept_min >= dropped_max).all()

    layers.load_state_dict(dense)
    tokens = torch.randint(0, model.config.vocab_size, (4, 64))
    report = prune_model(model, "wanda", 0.5, "unstructured", tokens)
    assert all(m.row_zeros_min == m.row_zeros_max == m.shape[1] // 2 for m in report.matrices)
    with torch.no_grad():
        assert model(tokens).logits.isfinite().all()
