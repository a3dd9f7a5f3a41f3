"""Structured pruning on families whose q/k norm spans the whole projection (OLMo 2/3).

There, removing heads changes the kept heads (they are normalised over fewer dimensions),
so removal is not zeroing: the run warns and the report says so. Elsewhere it is exact.
"""

import copy
import json

import pytest
import torch

from restorelcc.cli import main
from restorelcc.hf.families import decoder_layers, head_geometry
from restorelcc.prune import prune_model
from restorelcc.prune.calibrate import capture_block_inputs
from restorelcc.testing import save_checkpoint, tiny_model

RENORMALISED = "normalised over fewer dimensions"


def first_attention_gap(name: str) -> tuple[float, dict]:
    """Relative gap between the first block's attention with heads removed and with the
    same heads' o_proj columns zeroed (one KV group of two removed), and the report."""
    dense = tiny_model(name)
    g = head_geometry(dense)
    pruned = copy.deepcopy(dense)
    report = prune_model(pruned, "magnitude", 0.2, "heads", head_fraction=0.5, progress=False)
    zeroed = copy.deepcopy(dense)
    removed = decoder_layers(pruned)[0].self_attn, decoder_layers(zeroed)[0].self_attn
    tokens = torch.randint(0, 259, (2, 20), generator=torch.Generator().manual_seed(0))
    (hidden,), block_kwargs = capture_block_inputs(dense, tokens)
    kwargs = {k: block_kwargs[0][k] for k in ("position_embeddings", "attention_mask")}
    with torch.no_grad():
        for h in report.structured["removed_per_layer"][0]["heads"]:
            removed[1].o_proj.weight[:, h * g.head_dim : (h + 1) * g.head_dim] = 0
        a, b = (attn(hidden, **kwargs)[0] for attn in removed)
    return float((a - b).norm() / b.norm()), report.structured


@pytest.mark.parametrize("name", ["olmo2-gqa", "olmo3-gqa"])
def test_projection_norm_warns_and_reports_that_kept_heads_change(name):
    with pytest.warns(UserWarning, match=RENORMALISED):
        gap, structured = first_attention_gap(name)
    assert gap > 0.05  # the documented limitation: the kept heads really change
    assert structured["kept_heads_renormalised"] is True
    assert RENORMALISED in structured["note"] and "1 of 2 KV groups" in structured["note"]


def test_head_wise_norm_stays_exact_and_quiet(recwarn):
    gap, structured = first_attention_gap("qwen3-gqa")  # one head_dim norm shared by heads
    assert gap < 1e-5
    assert structured["kept_heads_renormalised"] is False and structured["note"] is None
    assert not [w for w in recwarn if RENORMALISED in str(w.message)]


def test_mlp_channels_only_does_not_warn(recwarn):
    model = tiny_model("olmo2-gqa")
    report = prune_model(model, "magnitude", 0.2, "heads", head_fraction=0.0, progress=False)
    assert report.structured["kept_heads_renormalised"] is False
    assert not [w for w in recwarn if RENORMALISED in str(w.message)]


def test_cli_warns_and_writes_the_note(tmp_path, capsys):
    model = tmp_path / "olmo2"
    save_checkpoint(tiny_model("olmo2-gqa"), model)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=RENORMALISED):
        rc = main(
            ["prune", "--model", str(model), "--method", "magnitude", "--pattern", "heads",
             "--sparsity", "0.3", "--head-fraction", "0.5", "--out", str(out), "--quiet"]
        )  # fmt: skip
    assert rc == 0
    structured = json.loads((out / "prune_report.json").read_text())["structured"]
    assert structured["kept_heads_renormalised"] is True
    assert RENORMALISED in structured["note"]
    printed = capsys.readouterr().out
    # the run summary names what its columns hold: removed block parameters, zeros kept
    assert "removed_of_block_params" in printed and "zeros_in_kept_weights" in printed
