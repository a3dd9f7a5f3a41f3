"""Fixtures of the demo tests: a tiny checkpoint, a guard that no model loads, and the
command line run up to ``run_demo``."""

import pytest

from restorelcc import demo as demo_module
from restorelcc.cli import main
from restorelcc.commands import demo as demo_command
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_checkpoint(tiny_model("llama-gqa"), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading a model (the first expensive step) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(demo_module, "load_model", refuse)


@pytest.fixture
def captured_config(monkeypatch):
    """Runs ``demo`` on the command line up to ``run_demo``; returns the config it gets."""
    seen = {}

    def fake_run_demo(config, out, overwrite=False):
        seen["config"] = config
        return {"table": "", "wall_s": 0.0}

    monkeypatch.setattr(demo_command, "run_demo", fake_run_demo)

    def run(*flags, tmp_path):
        assert main(["demo", *flags, "--out", str(tmp_path / "out"), "--quiet"]) == 0
        return seen["config"]

    return run
