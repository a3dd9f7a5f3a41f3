"""A default report's name takes a local model folder's parent only where the path as
typed names one: ``bench --model wanda24`` run in ``/tmp/rev-user`` had written
``bench_rev-user-wanda24.json``, naming the folder the user happened to be in."""

import pytest

from restorelcc.commands.reports import default_report_path

NAMES = [
    ("wanda24", "bench_wanda24.json"),
    ("./wanda24", "bench_wanda24.json"),
    ("wanda24/", "bench_wanda24.json"),
    ("runs/b/merged", "bench_b-merged.json"),
    ("runs/./b/merged/", "bench_b-merged.json"),
    ("../x", "bench_user-x.json"),
    (".", "bench_rev-user.json"),
    ("..", "bench_user.json"),
]


@pytest.mark.parametrize("model, name", NAMES, ids=[model for model, _ in NAMES])
def test_a_local_folder_is_named_as_typed(model, name, tmp_path, monkeypatch):
    for folder in ("user/rev-user/wanda24", "user/rev-user/runs/b/merged", "user/x"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "user" / "rev-user")
    assert default_report_path("bench", model).name == name


def test_an_absolute_path_names_its_parent_and_a_bare_adapter_folder_only_itself(
    tmp_path, monkeypatch
):
    (tmp_path / "user" / "b" / "merged").mkdir(parents=True)
    (tmp_path / "user" / "restored-24").mkdir()
    (tmp_path / "user" / "restored-24" / "adapter.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "user")
    model = str(tmp_path / "user" / "b" / "merged")
    assert default_report_path("eval", model).name == "eval_b-merged.json"
    for adapter in ("restored-24", "restored-24/adapter.json"):
        named = default_report_path("eval", "b/merged", adapter).name
        assert named == "eval_b-merged+restored-24.json"
