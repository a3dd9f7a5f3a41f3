"""Shared test set-up: a fixed seed per test and NaN-poisoned allocations; the benchmark
scripts of benchmarks/ importable as modules (tests/latency re-runs their measuring
functions; tests/demo runs bench_restore_quality's DoRA rows).

`torch.empty` / `torch.empty_like` return NaN-filled floating tensors during tests, so an
output element that a kernel or a function never writes shows up as NaN and fails the
comparison instead of passing by luck (the fla conftest does the same).
"""

import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if not torch.cuda.is_available():
    # The kernels then run interpreted on CPU tensors. TRITON_INTERPRET is read as each
    # @triton.jit decorates, so it is set before any test module imports a kernel: a
    # kernel compiled-mode and one interpreted cannot call each other.
    os.environ.setdefault("TRITON_INTERPRET", "1")

_real_empty = torch.empty
_real_empty_like = torch.empty_like


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() and t.device.type != "meta":
        with torch.no_grad():  # also for tensors created with requires_grad=True
            t.fill_(float("nan"))
    return t


def _nan_empty(*args, **kwargs):
    return _poison(_real_empty(*args, **kwargs))


def _nan_empty_like(*args, **kwargs):
    return _poison(_real_empty_like(*args, **kwargs))


@pytest.fixture(autouse=True)
def _seed_and_poison(monkeypatch):
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    monkeypatch.setattr(torch, "empty", _nan_empty)
    monkeypatch.setattr(torch, "empty_like", _nan_empty_like)
    yield


@pytest.fixture
def one_torch_thread():
    """Tiny models run ~100x faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_restore_quality(monkeypatch, tmp_path_factory):
    """benchmarks/bench_restore_quality on the tiny ``llama-gqa`` model and synthetic pairs,
    one step on a few pairs; returns its argv (``--methods training-free``: a later
    ``--methods`` in the test's argv replaces it)."""
    import bench_restore_quality

    from restorelcc.testing import byte_tokenizer, synthetic_pairs, tiny_config, tiny_model

    checkpoint = tmp_path_factory.mktemp("tiny-config")
    tiny_config("llama-gqa").save_pretrained(checkpoint)  # what the option checks read
    monkeypatch.setattr(
        bench_restore_quality,
        "load_model",
        lambda name: (tiny_model("llama-gqa"), byte_tokenizer()),
    )
    monkeypatch.setattr(
        bench_restore_quality, "instruction_pairs", lambda source, n, seed: synthetic_pairs(n)
    )
    sizes = {"--train-pairs": 8, "--probe-pairs": 8, "--heldout-pairs": 4, "--steps": 1}
    argv = ["--model", str(checkpoint), "--methods", "training-free", "--ppl-tokens", "64"]
    for option, value in sizes.items():
        argv += [option, str(value)]
    return argv + ["--batch-size", "4", "--max-length", "64"]


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        reason = "needs a CUDA device"
    else:
        from lcc_kernels.decode import INTERPRETED  # after collection: as the tests run them

        if not INTERPRETED:
            return
        # `make test` interprets the kernels (for the CPU tests); GPU tests are there for
        # the compiled ones, at sizes the interpreter would take hours over.
        reason = "runs the compiled kernels: unset TRITON_INTERPRET (pytest -m 'gpu or triton')"
    skip_gpu = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip_gpu)


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory in which nothing can be made: a read-only (0o555) folder, or, for root
    (whom modes do not stop), /sys, where the kernel refuses new files. Skips where
    neither refuses."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    refusing = None
    for candidate in (folder, Path("/sys")):
        try:
            os.rmdir(tempfile.mkdtemp(dir=candidate))
        except OSError:
            refusing = candidate
            break
    try:
        if refusing is None:
            pytest.skip("no directory here refuses writes")
        yield refusing
    finally:
        folder.chmod(0o755)


@pytest.fixture
def tokenizers_take_48(monkeypatch):
    """Every tokenizer loaded from a checkpoint folder takes at most 48 tokens
    (``model_max_length``), fewer than the tiny models' positions: for checks that must
    heed the tokenizer's limit as well as the config's."""
    import restorelcc.loading

    real = restorelcc.loading.load_tokenizer

    def short_tokenizer(*args, **kwargs):
        tokenizer = real(*args, **kwargs)
        tokenizer.model_max_length = 48
        return tokenizer

    monkeypatch.setattr(restorelcc.loading, "load_tokenizer", short_tokenizer)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading a model's weights (``restorelcc.assets.load_model``, the first expensive
    step of a command) fails the test: what it checks is refused before."""
    import restorelcc.assets

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(restorelcc.assets, "load_model", refuse)


@pytest.fixture
def gpt2_checkpoint(tmp_path) -> Path:
    """A one-layer GPT-2 checkpoint: a model family restorelcc does not support."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from restorelcc.testing import save_checkpoint

    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=259)
    return save_checkpoint(GPT2LMHeadModel(config), tmp_path / "gpt2")
