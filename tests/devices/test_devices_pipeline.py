"""Pruning, capture, RestoreLCC (train, fold, adapter) and the baselines with the model
and every input on one device. The ``cpu`` variants run in CI; the ``cuda`` ones (marked
``gpu``) make the same assertions on a GPU, where a tensor built on the CPU meeting the
model, a ``.numpy()`` of a device tensor or a CPU-only generator would fail them. Tiny
models and user files only: nothing here needs the data or model wheels.
"""

import copy
import math

import pytest
import torch
from devices_helpers import (
    DEVICES,
    assert_finite_on,
    assert_on,
    linear_weights,
    logits_of,
    pruned_pair,
    token_ids,
)
from transformers import AutoModelForCausalLM

from restorelcc.baselines import (
    block_sparsity,
    lofit_baseline,
    lora_baseline,
    merged_sparsity,
    random_heads_restore,
    training_free,
)
from restorelcc.hf.families import decoder_layers, head_geometry, o_proj_of
from restorelcc.lcc import (
    HeadCompensation,
    Restoration,
    RestoreConfig,
    TrainConfig,
    capture_probe_activations,
    restore,
)
from restorelcc.lcc.capture import ProbeActivations
from restorelcc.lcc.components import lost_components
from restorelcc.lcc.probing import score_heads
from restorelcc.lcc.reference import capture_one_by_one
from restorelcc.lcc.tokens import ProbeSequences
from restorelcc.prune import prune_model
from restorelcc.prune.masks import prune_count
from restorelcc.testing import synthetic_pairs, tiny_model

# ------------------------------------------------------------------------------ pruning

ELEMENTWISE = [
    (method, pattern)
    for pattern in ("unstructured", "2:4")
    for method in ("magnitude", "wanda", "sparsegpt")
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("method", "pattern"), ELEMENTWISE)
def test_prune_on_device(device, method, pattern):
    dense = tiny_model("llama-gqa").to(device)
    model = copy.deepcopy(dense)
    calibration = None if method == "magnitude" else token_ids(device, 4, 24, seed=1)
    report = prune_model(model, method, 0.5, pattern, calibration, progress=False)

    assert_on(device, model)
    for m in report.matrices:
        rows, cols = m.shape
        if pattern == "2:4":
            assert m.nm["2:4"] and m.zeros == rows * cols // 2, m.name
        elif method in ("magnitude", "sparsegpt"):  # zeros counted per matrix, not per row
            assert m.zeros == prune_count(rows * cols, 0.5), m.name
        else:
            assert m.row_zeros_min == m.row_zeros_max == prune_count(cols, 0.5), m.name
    before, after = linear_weights(dense), linear_weights(model)
    for name, weight in after.items():
        kept = weight != 0
        if method == "sparsegpt":  # kept weights take the OBS update
            assert not torch.equal(weight[kept], before[name][kept]), name
        else:  # kept weights are untouched
            assert torch.equal(weight[kept], before[name][kept]), name
    if method == "magnitude":  # no data: the same masks as on the CPU, exactly
        on_cpu = copy.deepcopy(dense).cpu()
        prune_model(on_cpu, method, 0.5, pattern, progress=False)
        for name, weight in linear_weights(on_cpu).items():
            assert torch.equal(weight == 0, after[name].cpu() == 0), name

    ids = token_ids(device, 2, 9)
    pruned_logits = logits_of(model, ids)
    assert_finite_on(device, pruned_logits)
    assert (pruned_logits - logits_of(dense, ids)).abs().max() > 1e-3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_structured_prune_on_device(device, method):
    dense = tiny_model("llama-gqa").to(device)  # 6 heads, 2 KV heads of 16, hidden 96
    model = copy.deepcopy(dense)
    calibration = None if method == "magnitude" else token_ids(device, 4, 24, seed=2)
    report = prune_model(model, method, 0.5, "heads", calibration, progress=False)

    assert_on(device, model)
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 3
    g = head_geometry(model)
    removed = report.structured["removed_per_layer"]
    for index, layer in enumerate(decoder_layers(model)):
        attn, mlp = layer.self_attn, layer.mlp
        assert attn.q_proj.weight.shape == (g.heads * g.head_dim, g.hidden_size)
        assert attn.k_proj.weight.shape == (g.kv_heads * g.head_dim, g.hidden_size)
        assert attn.o_proj.weight.shape == (g.hidden_size, g.heads * g.head_dim)
        assert mlp.down_proj.weight.shape[1] == model.config.intermediate_size
        assert len(removed[index]["kv_heads"]) == 1 and len(removed[index]["heads"]) == 3
    if method == "magnitude":  # no data: the same groups and channels as on the CPU
        on_cpu = copy.deepcopy(dense).cpu()
        cpu_report = prune_model(on_cpu, method, 0.5, "heads", progress=False)
        assert cpu_report.structured["removed_per_layer"] == removed
        for name, weight in linear_weights(on_cpu).items():
            assert torch.equal(weight, linear_weights(model)[name].cpu()), name
    assert_finite_on(device, logits_of(model, token_ids(device, 2, 9)))


# ------------------------------------------------------------------------------ RestoreLCC


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy", ["tree", "cache", "full"])
def test_capture_on_device_equals_one_sequence_at_a_time(device, strategy, monkeypatch):
    """Every way of sharing the prompt between continuations (a tree mask, the prompt's KV
    cache, full rows) gives the activations of one full forward per sequence."""
    import restorelcc.lcc.capture as capture

    monkeypatch.setattr(capture, "continuation_strategy", lambda model, longest: strategy)
    dense, pruned = pruned_pair("llama-3x5", device)
    generator = torch.Generator().manual_seed(5)

    def sequences(low, high):
        lengths = torch.randint(low, high, (7,), generator=generator).tolist()
        return [torch.randint(0, 256, (n,), generator=generator).tolist() for n in lengths]

    probe = ProbeSequences(sequences(3, 30), sequences(1, 9), sequences(1, 9))
    ours = capture_probe_activations(dense, pruned, probe, batch_tokens=80, progress=False)
    reference = capture_one_by_one(dense, pruned, probe, progress=False)
    for field in ("dense", "pruned", "positive", "negative"):
        got, want = getattr(ours, field), getattr(reference, field)
        assert got.shape == (7, 3, 5, 16)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=field)


def small_restore_config(**fields) -> RestoreConfig:
    train = TrainConfig(epochs=1, batch_size=4, progress=False)
    settings = {"heads": 3, "probe_epochs": 20, "negatives": "tfidf", **fields}
    return RestoreConfig(train=train, **settings)


def initial_coefficients(restoration: Restoration, config: RestoreConfig) -> HeadCompensation:
    """The compensation ``restore`` started training from (same heads, init and seed)."""
    return HeadCompensation(
        restoration.geometry,
        restoration.heads,
        restoration.directions,
        config.init_std,
        config.train.seed,
    )


def assert_fold_equals_attached(restoration: Restoration, pruned, device: str):
    """The folded copy's logits are the attached model's (and differ from the pruned
    model's); returns the folded copy and its logits."""
    ids = token_ids(device, 2, 9, seed=3)
    plain = logits_of(pruned, ids)
    with restoration.attached(pruned):
        attached = logits_of(pruned, ids)
    folded_model = restoration.fold(copy.deepcopy(pruned))
    folded = logits_of(folded_model, ids)
    assert_on(device, folded_model)
    assert_finite_on(device, attached)
    assert_finite_on(device, folded)
    assert (attached - plain).abs().max() > 1e-4  # the compensation does something
    torch.testing.assert_close(folded, attached, rtol=1e-5, atol=1e-5)
    return folded_model, folded, ids


def assert_restoration_on_cpu(restoration: Restoration) -> None:
    """A restoration's tensors live on the CPU, wherever its model ran."""
    tensors = ("heads", "directions", "beta", "b") + ("scores",) * (restoration.scores is not None)
    assert_on("cpu", *(getattr(restoration, name) for name in tensors))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("name", "pattern"),
    [("llama-3x5", "unstructured"), ("llama-gqa", "heads")],  # heads: 6 -> 3 per layer
    ids=["unstructured", "heads"],
)
def test_restore_fold_adapter_and_merged_on_device(device, name, pattern, tokenizer, tmp_path):
    dense, pruned = pruned_pair(name, device, pattern=pattern)
    state = copy.deepcopy(pruned.state_dict())
    config = small_restore_config()
    restoration = restore(dense, pruned, tokenizer, synthetic_pairs(8), config)

    assert all(torch.equal(v, state[k]) for k, v in pruned.state_dict().items())  # untouched
    assert_restoration_on_cpu(restoration)
    g = head_geometry(pruned)
    assert restoration.heads.shape == (3, 2) and restoration.scores.shape == (g.layers, g.heads)
    assert ("dense_heads" in restoration.report) == (pattern == "heads")
    train = restoration.report["train"]
    assert train["steps"] == 2 and all(math.isfinite(loss) for loss in train["losses"])
    start = initial_coefficients(restoration, config)
    assert (restoration.beta - start.beta.detach()).abs().max() > 1e-4  # trained
    assert (restoration.b - start.b.detach()).abs().max() > 1e-4
    folded_model, folded, ids = assert_fold_equals_attached(restoration, pruned, device)

    loaded = Restoration.load(restoration.save(tmp_path / "adapter"))
    loaded.check_model(pruned)  # fingerprint of the model on the device
    for field in ("heads", "directions", "beta", "b", "scores"):
        assert torch.equal(getattr(loaded, field), getattr(restoration, field)), field
    reloaded = loaded.fold(copy.deepcopy(pruned))
    for layer in range(g.layers):
        assert torch.equal(o_proj_of(reloaded, layer).bias, o_proj_of(folded_model, layer).bias)

    restoration.export_merged(pruned, tmp_path / "merged", tokenizer)
    assert all(o_proj_of(pruned, i).bias is None for i in range(g.layers))  # left unfolded
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").to(device).eval()
    torch.testing.assert_close(logits_of(merged, ids), folded, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ baselines


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_lora_baselines_train_on_device(device, dora, tokenizer):
    _, pruned = pruned_pair("llama-3x5", device)
    config = TrainConfig(max_steps=2, batch_size=4, progress=False)
    result = lora_baseline(pruned, tokenizer, synthetic_pairs(8), config, rank=2, dora=dora)

    assert result.name == ("dora" if dora else "lora")
    assert_on(device, result.model)
    assert len(result.train.losses) == 2 and all(map(math.isfinite, result.train.losses))
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # B starts at zero
    ids = token_ids(device, 2, 9, seed=4)
    adapted = logits_of(result.model, ids)
    assert_finite_on(device, adapted)
    assert (adapted - logits_of(pruned, ids)).abs().max() > 1e-6
    merged = copy.deepcopy(result.model).merge_and_unload()
    assert_on(device, merged)
    torch.testing.assert_close(logits_of(merged, ids), adapted, rtol=1e-5, atol=1e-5)
    assert block_sparsity(result.model.get_base_model()) == pytest.approx(block_sparsity(pruned))
    assert merged_sparsity(result) < block_sparsity(pruned)  # merged deltas are dense


@pytest.mark.parametrize("device", DEVICES)
def test_training_free_random_heads_and_lofit_on_device(device, tokenizer):
    dense, pruned = pruned_pair("llama-3x5", device)
    pairs = synthetic_pairs(8)

    free = training_free(dense, pruned, tokenizer, pairs, progress=False)
    assert free.method == "training-free" and free.heads.shape == (15, 2)
    assert_restoration_on_cpu(free)
    assert torch.isfinite(free.b).all() and free.b.abs().max() > 0
    assert_fold_equals_attached(free, pruned, device)

    config = small_restore_config(heads=4)
    random = random_heads_restore(dense, pruned, tokenizer, pairs, config)
    assert random.method == "restorelcc-random-heads" and random.scores is None
    assert random.heads.shape == (4, 2) and random.report["train"]["steps"] == 2
    assert_restoration_on_cpu(random)
    start = initial_coefficients(random, config)
    assert (random.b - start.b.detach()).abs().max() > 1e-4
    assert_fold_equals_attached(random, pruned, device)

    lofit = lofit_baseline(pruned, tokenizer, pairs, config)
    assert lofit.method == "lofit" and lofit.heads.shape == (4, 2)
    assert lofit.report["selection"]["steps"] == lofit.report["train"]["steps"] == 2
    assert_restoration_on_cpu(lofit)
    assert lofit.scores.device.type == "cpu" and lofit.b.abs().min() > 0  # b starts at zero
    assert_fold_equals_attached(lofit, pruned, device)


@pytest.mark.parametrize("device", DEVICES)
def test_lost_components_and_probes_on_device(device):
    """The probing API given activations on a device: the compensation lost_components
    returns (on the CPU) and the probes' start and labels meet them there; the scores come
    back on the CPU, equal to the CPU's within float rounding."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(24, 2, 3, 8)] * 4  # [N, layers, heads, head_dim]
    cpu_acts = ProbeActivations(*(torch.randn(s, generator=generator) for s in shapes))
    acts = ProbeActivations(*(t.to(device) for t in vars(cpu_acts).values()))
    components = lost_components(acts.dense, acts.pruned, k=2)
    scores = score_heads(acts, components.compensation, epochs=20)
    assert scores.device.type == "cpu" and scores.shape == (2, 3)
    expected = score_heads(
        cpu_acts, lost_components(cpu_acts.dense, cpu_acts.pruned, k=2).compensation, epochs=20
    )
    # within one of the 16 held-out examples (8 pairs): float rounding may flip one
    torch.testing.assert_close(scores, expected, rtol=0, atol=1 / 16 + 1e-6)
