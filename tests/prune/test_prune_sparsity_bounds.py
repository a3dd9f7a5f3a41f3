"""The bounds of an unstructured sparsity (``check_model``): magnitude's and SparseGPT's
are per matrix, so a sparsity that rounds to a whole row is theirs to take; the bound named
for "keeps a
weight" prunes less than everything even where ``1 - 0.5 / size`` has 3 digits; "prunes
no weight" is decided by the widest row, not the narrowest."""

import re

import pytest

from restorelcc.prune.validate import PruneArgumentError, check_model, check_spec
from restorelcc.testing import tiny_model


def _bound(message: str, side: str) -> float:
    return float(re.search(rf"pass sparsity=([0-9.e-]+) or {side}", message).group(1))


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
def test_magnitude_and_sparsegpt_bound_a_matrix_not_a_row(method):
    """llama-3x5: narrowest row 60 inputs, smallest matrix k_proj [16, 60] = 960 weights.
    0.995 rounds to all 60 of a row (refused for Wanda) but to 955 of 960 for magnitude
    and SparseGPT, which prune per matrix."""
    model = tiny_model("llama-3x5")
    with pytest.raises(PruneArgumentError, match="at least 60 here"):
        check_model(model, check_spec("wanda", 0.995, "unstructured"))
    check_model(model, check_spec(method, 0.995, "unstructured"))
    with pytest.raises(PruneArgumentError, match="of a matrix") as error:
        check_model(model, check_spec(method, 0.9999, "unstructured"))
    assert "at least 960 here" in str(error.value)
    assert _bound(str(error.value), "less") == 0.999


def test_the_named_bound_keeps_a_weight_where_the_rounding_edge_has_3_digits():
    """50 inputs: 1 - 0.5/50 = 0.99 itself rounds half up to all 50 (49.5 -> 50), so the
    bound named is the next 3-digit value below it."""
    model = tiny_model("llama-3x5", hidden_size=50, intermediate_size=108)
    with pytest.raises(PruneArgumentError, match="at least 50 here") as error:
        check_model(model, check_spec("wanda", 0.995, "unstructured"))
    most = _bound(str(error.value), "less")
    assert most == 0.989
    check_model(model, check_spec("wanda", most, "unstructured"))


def test_prunes_no_weight_is_decided_by_the_widest_row():
    """llama-gqa: rows of 96 to 200 inputs. 0.004 prunes 1 of 200 (0 of 96): it prunes
    something, so it passes; 0.002 prunes none of 200 and names 0.5/200."""
    model = tiny_model("llama-gqa")
    check_model(model, check_spec("wanda", 0.004, "unstructured"))
    with pytest.raises(PruneArgumentError, match="at most 200 here") as error:
        check_model(model, check_spec("wanda", 0.002, "unstructured"))
    assert _bound(str(error.value), "more") == 0.0025
