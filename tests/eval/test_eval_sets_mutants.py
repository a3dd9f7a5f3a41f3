"""Malformed request documents that ``eval_sets.request_rows`` refuses with a ``DataError``
beyond those test_eval_splits names: one choice, a bool as gold, a query that goes on
after ``Answer:``, a request that is not a mapping or has no document."""

import pytest
from test_eval_splits import request

from restorelcc.data import eval_sets
from restorelcc.errors import DataError

QUERY = "Question: S\nAnswer:"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (request("q", QUERY, ("only",)), r"choices \['only'\] are not a list of two or more"),
        (request("q", QUERY, gold=True), "gold True is no index into its 2 choices"),
        (request("q", QUERY + " B"), "document 'q' has an unexpected query layout"),
        ("not a request", "arc_easy/x has an unexpected layout: string indices"),
        ({"native_id": "q", "doc": None}, "arc_easy/x has an unexpected layout: 'NoneType'"),
    ],
    ids=["one-choice", "bool-gold", "text-after-answer", "not-a-mapping", "no-document"],
)
def test_more_malformed_documents_are_named(monkeypatch, bad, message):
    monkeypatch.setattr(eval_sets, "read_requests", lambda folder: [bad])
    with pytest.raises(DataError, match=message):
        eval_sets.request_rows("arc_easy", "arc_easy/x")
