"""``demo --model`` a checkpoint that is pruned already: pruning it to its own pattern
again is warned of, and the restoration is refused as of a dense model that is pruned
already (give the unpruned one), not as "nothing was pruned (prune it first)"."""

import copy

import pytest
from demo_helpers import tiny_config

from restorelcc.demo import run_demo
from restorelcc.errors import UnsupportedModelError
from restorelcc.prune import prune_model
from restorelcc.testing import save_checkpoint, tiny_model


def test_a_pruned_model_is_called_pruned_already(tmp_path):
    pruned = copy.deepcopy(tiny_model("llama-gqa"))
    prune_model(pruned, "magnitude", 0.5, "2:4", progress=False)
    folder = save_checkpoint(pruned, tmp_path / "pruned-24")
    config = tiny_config(folder, patterns=("2:4",), methods=("training-free",))
    warned = r"already has 50% zeros in layer 0 self_attn\.q_proj"
    with pytest.warns(UserWarning, match=warned), pytest.raises(UnsupportedModelError) as refused:
        run_demo(config, tmp_path / "out")
    message = str(refused.value)
    assert f"the dense model ({folder}) has 50% zeros in layer 0 self_attn.q_proj: it " in message
    assert "looks pruned already" in message and "demo --model" in message
    assert "prune it first" not in message
    assert not (tmp_path / "out").exists()
