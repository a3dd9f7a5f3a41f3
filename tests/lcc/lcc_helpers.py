"""Helpers shared by the RestoreLCC tests (a unique module name, imported by the tests)."""

import copy
import json
from pathlib import Path

import torch

from restorelcc.cli import main
from restorelcc.hf.families import head_geometry
from restorelcc.lcc.fingerprint import model_fingerprint
from restorelcc.lcc.heads import HeadCompensation
from restorelcc.lcc.restoration import Restoration
from restorelcc.lcc.train import TrainConfig, train_response_lm
from restorelcc.prune import prune_model
from restorelcc.testing import WORDS, save_checkpoint, tiny_model


def pruned_copy(dense, sparsity: float = 0.5):
    """A magnitude-pruned deep copy of ``dense`` (the package's pruner)."""
    model = copy.deepcopy(dense)
    prune_model(model, "magnitude", sparsity)
    return model


def trained_like(model, seed: int = 0) -> Restoration:
    """A restoration with sizeable coefficients, as if trained."""
    g = head_geometry(model)
    gen = torch.Generator().manual_seed(seed)
    heads = torch.tensor([[0, 1], [1, 0], [1, 2], [g.layers - 1, g.heads - 1]])
    directions = torch.linalg.qr(torch.randn(4, g.head_dim, g.head_dim, generator=gen)).Q.mT
    comp = HeadCompensation(g, heads, directions, init_std=0.3, seed=seed)
    return Restoration.from_compensation(comp, model.config.model_type, model_fingerprint(model))


def compensation(model, seed=0, std=1e-3):
    g = head_geometry(model)
    heads = torch.tensor([[0, 1], [1, 3], [2, 4]])
    noise = torch.randn(3, g.head_dim, g.head_dim, generator=torch.Generator().manual_seed(seed))
    directions = torch.linalg.qr(noise).Q.transpose(1, 2)
    return HeadCompensation(g, heads, directions, init_std=std, seed=seed)


def train(model, tokenizer, pairs, comp, **kw):
    config = TrainConfig(progress=False, **{"epochs": 1, "batch_size": 4, **kw})
    return train_response_lm(
        model, tokenizer, pairs, list(comp.parameters()), config, lambda: comp.attached(model)
    )


def save_restore_inputs(folder: Path, family: str = "llama-3x5", name: str = ""):
    """A tiny dense checkpoint of ``family`` and its pruned copy, saved as ``folder /
    f"{name}dense"`` and ``f"{name}pruned"``, and 20 instruction pairs in ``folder /
    "pairs.jsonl"``, as ``restore_argv`` names them; the pruned model."""
    dense = tiny_model(family)
    pruned = pruned_copy(dense)
    for kind, model in (("dense", dense), ("pruned", pruned)):
        save_checkpoint(model, folder / f"{name}{kind}")
    rows = [
        {
            "instruction": f"Name word {i}.",
            "input": "",
            "output": f"{WORDS[i % 12]} {WORDS[i * 5 % 12]}",
        }
        for i in range(20)
    ]
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return pruned


def restore_argv(folder: Path, *extra) -> list[str]:
    """``restorelcc restore`` on ``save_restore_inputs(folder, ...)``, small settings."""
    return [
        "restore",
        "--dense", str(folder / "dense"),
        "--pruned", str(folder / "pruned"),
        "--out", str(folder / "out"),
        "--data", str(folder / "pairs.jsonl"),
        "--pairs", "16",
        "--heads", "3",
        "--epochs", "1",
        "--batch-size", "4",
        "--negatives", "tfidf",
        "--quiet",
        *extra,
    ]  # fmt: skip


def method_argv(folder: Path, *extra) -> list[str]:
    """``restore_argv()``, less the options of its defaults that ``--method`` refuses."""
    argv = restore_argv(folder, *extra)
    if "--method" not in extra:
        return argv
    drop = ("--negatives",) if "lofit" in extra else ("--negatives", "--heads", "--epochs")
    drop += ("--batch-size",) if "training-free" in extra else ()
    for option in drop:
        if option not in extra:
            at = argv.index(option)
            del argv[at : at + 2]
    return argv


def refused(argv, capsys) -> str:
    """The one-line error of ``restorelcc restore`` run with ``argv``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("restorelcc restore: error: ") and err.count("\n") == 1
    return err
