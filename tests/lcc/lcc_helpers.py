"""Helpers shared by the RestoreLCC tests (a unique module name, imported by the tests)."""

import copy

import torch

from restorelcc.hf.families import head_geometry
from restorelcc.lcc.fingerprint import model_fingerprint
from restorelcc.lcc.heads import HeadCompensation
from restorelcc.lcc.restoration import Restoration
from restorelcc.lcc.train import TrainConfig, train_response_lm
from restorelcc.prune import prune_model


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
