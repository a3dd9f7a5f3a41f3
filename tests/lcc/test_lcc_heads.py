import pytest
import torch

from restorelcc.hf.families import head_geometry, o_proj_of
from restorelcc.lcc.heads import HeadCompensation, check_heads, o_proj_input_offsets, scatter_heads
from restorelcc.testing import tiny_model


def test_offsets_are_added_to_the_o_proj_input_of_each_layer():
    model = tiny_model("llama-3x5")
    g = head_geometry(model)
    offsets = torch.randn(g.layers, g.heads * g.head_dim)
    ids = torch.tensor([[5, 6, 7, 8]])

    def inputs():
        seen = {}
        handles = [
            o_proj_of(model, i).register_forward_pre_hook(
                lambda m, args, i=i: seen.__setitem__(i, args[0].clone())
            )
            for i in range(g.layers)
        ]
        try:
            with torch.no_grad():
                model(ids)
        finally:
            for h in handles:
                h.remove()
        return seen

    plain = inputs()
    with o_proj_input_offsets(model, lambda layer: offsets[layer] if layer == 1 else None):
        shifted = inputs()  # recorded after the offset hook: sees the shifted input
    torch.testing.assert_close(shifted[0], plain[0])
    torch.testing.assert_close(shifted[1], plain[1] + offsets[1])
    assert all(not o_proj_of(model, i)._forward_pre_hooks for i in range(g.layers))


def test_offset_hook_shifts_the_output_by_w_o_times_the_offset():
    model = tiny_model("llama-3x5")
    g = head_geometry(model)
    o_proj = o_proj_of(model, 2)  # the last layer: its output feeds the residual directly
    offset = torch.randn(g.heads * g.head_dim)
    outputs = []
    handle = o_proj.register_forward_hook(lambda m, a, out: outputs.append(out.clone()))
    try:
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
            with o_proj_input_offsets(model, lambda layer: offset if layer == 2 else None):
                model(torch.tensor([[1, 2, 3]]))
    finally:
        handle.remove()
    torch.testing.assert_close(
        outputs[1] - outputs[0], (o_proj.weight @ offset).expand_as(outputs[0])
    )


def test_hooks_removed_on_error():
    model = tiny_model("llama-3x5")
    with (
        pytest.raises(RuntimeError, match="inside"),
        o_proj_input_offsets(model, lambda layer: None),
    ):
        raise RuntimeError("inside")
    assert all(not o_proj_of(model, i)._forward_pre_hooks for i in range(3))


def test_compensation_is_directions_times_beta_plus_b():
    g = head_geometry(tiny_model("llama-3x5"))
    heads = torch.tensor([[2, 4], [0, 1], [2, 0]])
    directions = torch.linalg.qr(torch.randn(3, 16, 16)).Q.transpose(1, 2)
    comp = HeadCompensation(g, heads, directions, init_std=0.5, seed=1)
    assert comp.beta.dtype == torch.float32 and comp.trainable_parameters == 3 * 2 * 16
    c = comp.per_head()
    for s in range(3):
        torch.testing.assert_close(c[s], directions[s].T @ comp.beta[s] + comp.b[s])
    offsets = comp.layer_offsets()
    assert offsets.shape == (3, 5 * 16)
    torch.testing.assert_close(offsets[2, 4 * 16 : 5 * 16], c[0])
    torch.testing.assert_close(offsets[0, 16:32], c[1])
    assert comp.layer_offset(1) is None
    torch.testing.assert_close(comp.layer_offset(2), offsets[2])
    torch.testing.assert_close(scatter_heads(g, heads, c), offsets)
    same = HeadCompensation(g, heads, directions, init_std=0.5, seed=1)
    assert torch.equal(same.beta, comp.beta) and torch.equal(same.b, comp.b)


def test_compensation_indices_follow_the_module():
    """The per-layer row indices move with .to() (a cuda module must not index with CPU
    tensors, a host-to-device copy per layer and forward) and stay out of the state dict."""
    g = head_geometry(tiny_model("llama-3x5"))
    heads = torch.tensor([[2, 4], [0, 1], [2, 0]])
    comp = HeadCompensation(g, heads, torch.eye(16).expand(3, 16, 16), init_std=0.5)
    assert set(comp.state_dict()) == {"beta", "b", "heads", "directions"}
    comp.to("meta")
    assert comp.head_order.device.type == "meta"
    assert comp.layer_offset(2).device.type == "meta"


def test_bad_heads():
    g = head_geometry(tiny_model("llama-3x5"))
    with pytest.raises(ValueError, match="out of range"):
        check_heads(torch.tensor([[3, 0]]), g)  # 3 layers: layer index 3 does not exist
    with pytest.raises(ValueError, match="out of range"):
        check_heads(torch.tensor([[0, 5]]), g)
    with pytest.raises(ValueError, match="twice"):
        check_heads(torch.tensor([[1, 1], [1, 1]]), g)
    with pytest.raises(ValueError, match="non-empty"):
        check_heads(torch.zeros(0, 2, dtype=torch.long), g)
    for floats in (
        torch.tensor([[0.0, 1.7]]),
        [[0, 1.7]],
        torch.tensor([[0, 1]], dtype=torch.float64),
    ):
        with pytest.raises(ValueError, match="heads must hold integer .* got torch.float"):
            check_heads(floats, g)  # not truncated to head 1
    with pytest.raises(ValueError, match="integer .* got torch.bool"):
        check_heads(torch.tensor([[True, False]]), g)
    for integers in (
        [[0, 1]],
        torch.tensor([[0, 1]], dtype=torch.int32),
        torch.tensor([[0, 1]], dtype=torch.uint8),
    ):
        assert check_heads(integers, g).dtype == torch.long
