"""``counted``: the noun in the singular for exactly one, plural otherwise (none included)."""

import pytest

from restorelcc.io import counted


@pytest.mark.parametrize(
    "count, shown", [(0, "0 tokens"), (1, "1 token"), (2, "2 tokens"), (8192, "8192 tokens")]
)
def test_the_noun_is_singular_for_one_only(count, shown):
    assert counted(count, "token") == shown
