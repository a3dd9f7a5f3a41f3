"""Messages about models of other attention shapes print each shape as words ("2 layers x
6 heads (2 KV heads) of head_dim 16, hidden size 96"), not ``HeadGeometry``'s repr."""

import pytest
from lcc_helpers import pruned_copy, trained_like

from restorelcc.errors import UnsupportedModelError
from restorelcc.hf.families import HeadGeometry
from restorelcc.lcc.compat import check_compatible_configs, describe_geometry
from restorelcc.lcc.restoration import AdapterMismatchError
from restorelcc.testing import tiny_model

THREE_BY_FIVE = "3 layers x 5 heads (1 KV head) of head_dim 16, hidden size 60"
GQA = "2 layers x 6 heads (2 KV heads) of head_dim 16, hidden size 96"


def test_a_geometry_reads_as_words():
    one = HeadGeometry(layers=1, heads=1, kv_heads=1, head_dim=8, hidden_size=8)
    assert describe_geometry(one) == "1 layer x 1 head (1 KV head) of head_dim 8, hidden size 8"


def test_a_restoration_on_a_model_of_another_shape_names_both_shapes():
    restoration = trained_like(pruned_copy(tiny_model("llama-3x5")))
    with pytest.raises(AdapterMismatchError) as refused:
        restoration.fold(pruned_copy(tiny_model("llama-gqa")))
    assert str(refused.value) == f"restoration is for {THREE_BY_FIVE}, the model has {GQA}"


def test_models_of_other_attention_name_both_shapes():
    with pytest.raises(UnsupportedModelError) as refused:
        check_compatible_configs(tiny_model("llama-gqa").config, tiny_model("llama-3x5").config)
    assert str(refused.value) == (
        f"the pruned model's attention ({THREE_BY_FIVE}) differs from the dense model's "
        f"({GQA}) by more than removed heads"
    )
