"""LoFiT ranks heads by the L2 norm of each head's scaling vector ``A(l, h)``, as the authors'
code (fc2869/lo-fit, ``lofit_trainer.py``: ``np.linalg.norm`` of each head's vector) does;
the L1 norm had been used, which picks other heads where the two orders differ. Its saved
hyper-parameters hold ``init_std``, the scale of the noise ``A`` and ``b`` start from."""

import copy

import pytest
import torch

import restorelcc.baselines as baselines
from restorelcc.lcc import RestoreConfig, TrainConfig
from restorelcc.prune import prune_model
from restorelcc.testing import byte_tokenizer, synthetic_pairs, tiny_model

TRAIN = TrainConfig(max_steps=1, batch_size=4, progress=False)


@pytest.fixture
def pruned():
    model = copy.deepcopy(tiny_model("llama-3x5"))  # 3 layers x 5 heads x 16
    prune_model(model, "magnitude", 0.5)
    return model


def _scales() -> torch.Tensor:
    """Selection scales ``[3, 5 * 16]`` whose L1 and L2 orders disagree: head (0, 1) has one
    scale of 1 (L1 = L2 = 1), head (2, 3) sixteen of 0.1 (L1 1.6, L2 0.4), the rest 1e-4."""
    scales = torch.full((3, 5, 16), 1e-4)
    scales[0, 1] = 0.0
    scales[0, 1, 7] = 1.0
    scales[2, 3] = 0.1
    return scales.reshape(3, 80)


def test_heads_are_ranked_by_the_l2_norm_of_their_scales(pruned, monkeypatch):
    trained = baselines.train_response_lm

    def select_then_set(model, tokenizer, pairs, params, config, *args, desc="", **kwargs):
        result = trained(model, tokenizer, pairs, params, config, *args, desc=desc, **kwargs)
        if desc == "lofit: select heads":  # as if training had left these scales
            with torch.no_grad():
                params[0].copy_(_scales())
        return result

    monkeypatch.setattr(baselines, "train_response_lm", select_then_set)
    config = RestoreConfig(heads=1, train=TRAIN)
    restoration = baselines.lofit_baseline(pruned, byte_tokenizer(), synthetic_pairs(8), config)
    assert restoration.heads.tolist() == [[0, 1]]  # L1 had picked (2, 3)
    want = _scales().reshape(3, 5, 16).norm(dim=-1)
    torch.testing.assert_close(restoration.scores, want, rtol=1e-6, atol=0)


def test_the_hyperparameters_hold_init_std(pruned):
    config = RestoreConfig(heads=2, init_std=2e-3, train=TRAIN)
    restoration = baselines.lofit_baseline(pruned, byte_tokenizer(), synthetic_pairs(8), config)
    assert restoration.hyperparameters["init_std"] == 2e-3
    assert restoration.hyperparameters["l1"] == baselines.LOFIT_L1
