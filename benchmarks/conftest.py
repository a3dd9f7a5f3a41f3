"""pytest set-up for benchmarks/: collect bench_*.py, skip GPU benchmarks without CUDA, and
store the GPU name, versions and commit with every pytest-benchmark result. LCC_COMMIT
names the commit where the tree has no .git (a copy sent to a lent machine; gpu_run.sh
sets it): `machine_info.lcc_kernels.commit`, and pytest-benchmark's `commit_info` when
git told it nothing."""

import os

import pytest
import torch


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself; this adds the
    # bench_*.py files of a directory run (`pytest benchmarks`).
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="GPU benchmark: needs a CUDA device")
    for item in items:
        # the marker itself: item.keywords also holds every directory and file name
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config, machine_info):
    from lcc_kernels.bench import environment

    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine_info["lcc_kernels"] = environment(device, os.environ.get("LCC_COMMIT"))


def pytest_benchmark_update_commit_info(config, commit_info):
    from lcc_kernels.bench import dirty_from_commit

    commit = os.environ.get("LCC_COMMIT")
    # pytest-benchmark's ids without git ("unversioned", or "unknown" after an error)
    if commit and commit_info.get("id") in ("unversioned", "unknown"):
        commit_info.update(id=commit, dirty=dirty_from_commit(commit))
