"""A swapped tiny model through the Triton kernels (interpreted on a CPU: a few seconds).

On a CPU, tests/conftest.py sets TRITON_INTERPRET before the kernels are imported; if
they were compiled anyway (TRITON_INTERPRET=0 with no GPU), skip.
"""

import copy

import pytest
import torch
from _hf_swap_helpers import (
    add_o_bias,
    assert_generation_matches,
    assert_matches,
    prune_attention,
    prune_mlp,
)

from lcc_kernels.kernels import INTERPRETED
from restorelcc.hf.swap import swap_attention
from restorelcc.testing import tiny_model

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(
        not (INTERPRETED or torch.cuda.is_available()),
        reason="Triton kernels need a GPU or TRITON_INTERPRET=1 set before lcc_kernels is imported",
    ),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _model(pattern: str):
    return add_o_bias(prune_attention(tiny_model("llama-gqa"), pattern)).to(DEVICE)


@pytest.fixture
def triton_rows(monkeypatch):
    """Rows of every call that reached a Triton kernel (no silent reference fallback)."""
    import lcc_kernels.linear

    rows, real = [], lcc_kernels.linear._run_triton
    monkeypatch.setattr(
        lcc_kernels.linear,
        "_run_triton",
        lambda x2d, *args: rows.append(x2d.shape[0]) or real(x2d, *args),
    )
    return rows


def test_skinny_kernels_prefill_and_decode_fp32(triton_rows):
    pruned = _model("2:4")
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped, "2:4", backend="skinny")
    prompt = torch.randint(0, 256, (1, 5), device=DEVICE)
    assert_matches(swapped, pruned, prompt, torch.float32)  # 5 rows: the 16-row dot
    assert_generation_matches(swapped, pruned, prompt, 2, torch.float32)  # M = 1 steps
    assert set(triton_rows) == {5, 1}


def test_tiled_bitmap_kernels_fp16(triton_rows):
    pruned = _model("unstructured")
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped, "bitmap", backend="tiled")
    swapped.half()
    assert_matches(swapped, pruned, torch.randint(0, 256, (2, 7), device=DEVICE), torch.float16)
    assert triton_rows == [14] * 4  # 2 layers x (qkv, o_proj)


@pytest.mark.parametrize(("pattern", "backend"), [("2:4", "tiled"), ("unstructured", "skinny")])
def test_mlp_swapped_too_fp16(triton_rows, pattern, backend):
    pruned = prune_mlp(_model(pattern), pattern)
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped, backend=backend, mlp=True)
    swapped.half()
    prompt = torch.randint(0, 256, (1, 5), device=DEVICE)
    assert_matches(swapped, pruned, prompt, torch.float16)
    assert triton_rows == [5] * 8  # 2 layers x (qkv, o_proj, gate_up, down_proj)


def test_streams_decode_bitmap_fp32(monkeypatch):
    """The streams backend in a swapped model: fused q/k/v split after one launch, o_proj
    with its bias, on prefill (several M tiles) and decode; generate runs without grad."""
    import lcc_kernels.launch

    rows, real = [], lcc_kernels.launch.run_streams
    monkeypatch.setattr(
        lcc_kernels.launch,
        "run_streams",
        lambda x2d, *args: rows.append(x2d.shape[0]) or real(x2d, *args),
    )
    pruned = _model("unstructured")
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped, "bitmap", backend="streams")
    prompt = torch.randint(0, 256, (1, 6), device=DEVICE)
    with pytest.raises(RuntimeError, match="inference only: a backward cannot run through them"):
        swapped(prompt).logits.sum().backward()  # recorded through the op: refused
    rows.clear()  # the op runs the streams too
    with torch.no_grad():
        assert_matches(swapped, pruned, prompt, torch.float32)
    assert_generation_matches(swapped, pruned, prompt, 2, torch.float32)
    assert set(rows) == {6, 1} and len(rows) == 3 * 2 * 2  # 3 forwards x 2 layers x 2 launches


def test_decode_streams_run_decode_on_streams_and_prefill_on_tiles(monkeypatch):
    """swap_attention(decode_streams=True): the rules a GPU applies (here on a pretend
    4-SM device, as a CPU always takes the reference path) send the 1-row decode calls to
    the streams and the 6-row prefill to the bitmap kernels."""
    import lcc_kernels.launch
    from lcc_kernels import dispatch, linear

    def gpu_rules(m, weight, dtype, device, backend, decode_streams):
        key = dispatch.WeightKey.of(weight, dtype)
        return dispatch.plan_for(m, key, "pretend-gpu", 4, backend, False, decode_streams)

    monkeypatch.setattr(linear, "choose_plan", gpu_rules)
    calls = []
    for name in ("run_streams", "run_linear"):
        real = getattr(lcc_kernels.launch, name)
        monkeypatch.setattr(
            lcc_kernels.launch,
            name,
            lambda x2d, *args, _real=real, _name=name: (
                calls.append((_name, x2d.shape[0])) or _real(x2d, *args)
            ),
        )
    pruned = _model("unstructured")
    swapped = copy.deepcopy(pruned)
    report = swap_attention(swapped, "bitmap", decode_streams=True)
    assert report.to_dict()["decode_streams"] is True and "bytes_streams" in report.table()
    # layouts are built on a GPU only (on a CPU "auto" runs the reference path)
    assert (report.bytes_streams > 0) == (DEVICE == "cuda")
    owner = swapped.model.layers[0].self_attn.packed_qkv
    assert owner.decode_streams and "decode_streams=True" in repr(owner)
    prompt = torch.randint(0, 256, (1, 6), device=DEVICE)
    with torch.no_grad():
        assert_matches(swapped, pruned, prompt, torch.float32)
    assert_generation_matches(swapped, pruned, prompt, 2, torch.float32)
    assert set(calls) == {("run_linear", 6), ("run_streams", 1)}
    assert calls.count(("run_streams", 1)) == 2 * 2  # one decode forward x 2 layers x 2


@pytest.mark.parametrize(
    ("pattern", "backend", "op", "mlp"),
    [
        ("2:4", "skinny", "sparse24_linear", False),
        ("unstructured", "streams", "bitmap_streams_linear", False),
        ("2:4", "skinny", "sparse24_linear", True),  # + one gate/up launch and down_proj's
    ],
)
def test_compiled_swapped_model_is_one_graph_with_one_qkv_launch_per_layer(
    pattern, backend, op, mlp
):
    import lcc_kernels
    from restorelcc.hf.attention import PackedLinear

    pruned = prune_mlp(_model(pattern), pattern) if mlp else _model(pattern)
    swapped = copy.deepcopy(pruned)
    fmt = "2:4" if pattern == "2:4" else "bitmap"
    swap_attention(swapped, fmt, backend=backend, mlp=mlp)
    if backend == "streams":  # layouts are built before tracing
        for module in swapped.modules():
            if isinstance(module, PackedLinear):
                lcc_kernels.prepare_streams(module.packed)
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(swapped, fullgraph=True, backend=recording_backend)
    prompt = torch.randint(0, 256, (2, 5), device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(compiled(prompt).logits, swapped(prompt).logits)
    assert len(graphs) == 1
    launches = [
        str(node.target)
        for node in graphs[0].graph.nodes
        if node.op == "call_function" and "lcc_kernels" in str(node.target)
    ]
    per_layer = 4 if mlp else 2  # q/k/v, o_proj (, gate/up, down_proj)
    assert launches == [f"lcc_kernels.{op}.default"] * 2 * per_layer  # 2 layers
    assert_matches(compiled, pruned, prompt, torch.float32)
