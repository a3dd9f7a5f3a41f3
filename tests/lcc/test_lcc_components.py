import pytest
import torch

from restorelcc.lcc.components import lost_components


def activations(n, layers=3, heads=5, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, layers, heads, d, generator=g)
    pruned = dense - 0.3 * torch.randn(n, layers, heads, d, generator=g) - 0.2
    return dense, pruned


@pytest.mark.parametrize("n", [40, 7], ids=["N>d", "N<d"])
def test_directions_are_orthonormal_in_fp32(n):
    comps = lost_components(*activations(n))
    rank = min(n, 16)
    v = comps.directions.reshape(-1, 16, 16)
    assert v.dtype == torch.float32
    gram = v @ v.transpose(1, 2)
    expected = torch.diag(torch.cat([torch.ones(rank), torch.zeros(16 - rank)]))
    torch.testing.assert_close(gram, expected.expand_as(gram), rtol=0, atol=1e-6)
    assert (v[:, rank:] == 0).all()  # zero rows pad when N < d


def test_directions_do_not_depend_on_the_order_of_the_samples():
    """SVD signs had followed the row order: training started from another c."""
    dense, pruned = activations(30)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    a, b = lost_components(dense, pruned), lost_components(dense[order], pruned[order])
    torch.testing.assert_close(a.directions, b.directions, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.compensation, b.compensation, rtol=0, atol=1e-5)
    # each direction points along the mean shift of the samples (U column sums >= 0)
    assert (torch.einsum("lhkd,lhd->lhk", a.directions, a.mean_difference) >= -1e-6).all()


def test_directions_orthogonal_to_the_mean_shift_do_not_depend_on_the_order_either():
    """Samples in +/- pairs around a shift along the first axis, spread over the others:
    every direction but the first is orthogonal to the shift (its U column sums to 0),
    where the mean-shift rule alone follows the order."""
    g = torch.Generator().manual_seed(2)
    spread = torch.randn(64, 3, 5, 16, generator=g)
    spread[..., 0] = 0
    diff = torch.cat([spread, -spread])
    diff[..., 0] += 1.0
    order = torch.randperm(128, generator=g)
    zeros = torch.zeros_like(diff)
    a, b = lost_components(diff, zeros), lost_components(diff[order], zeros)
    torch.testing.assert_close(a.directions, b.directions, rtol=0, atol=1e-4)


def test_svd_reconstructs_the_differences_per_head():
    dense, pruned = activations(30)
    comps = lost_components(dense, pruned)
    diff = (dense - pruned).double()
    for layer, head in [(0, 0), (2, 4), (1, 3)]:
        d = diff[:, layer, head]
        s = comps.singular_values[layer, head].double()
        v = comps.directions[layer, head].double()
        # D V^T V = D (full basis) and the singular values match an fp64 SVD of the head
        torch.testing.assert_close(d @ v.T @ v, d, rtol=0, atol=1e-5)
        torch.testing.assert_close(s, torch.linalg.svdvals(d), rtol=1e-6, atol=1e-6)


def test_compensation_rank_one_and_full_rank_is_the_mean():
    dense, pruned = activations(30)
    diff = (dense - pruned).double()
    full = lost_components(dense, pruned, k=16)
    torch.testing.assert_close(full.compensation.double(), diff.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(full.mean_difference.double(), diff.mean(0), rtol=0, atol=1e-6)
    assert full.k == 16
    one = lost_components(dense, pruned, k=1)
    assert one.k == 1
    assert lost_components(dense, pruned, k=100).k == 16  # capped at d
    assert lost_components(dense[:5], pruned[:5], k=10).k == 5  # capped at N
    d = diff[:, 1, 2]
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    want = u[:, 0].mean() * s[0] * vh[0]  # sign-invariant product
    torch.testing.assert_close(one.compensation[1, 2].double(), want, rtol=0, atol=1e-6)


def test_heads_are_indexed_by_layer_then_head():
    dense, pruned = activations(20)
    pruned[:, 2, 1] = dense[:, 2, 1]  # nothing lost in layer 2, head 1 only
    comps = lost_components(dense, pruned)
    assert (comps.singular_values[2, 1] == 0).all()
    assert (comps.singular_values[1, 2] > 0).all()


def test_bad_shapes():
    dense, pruned = activations(5)
    with pytest.raises(ValueError, match="share one"):
        lost_components(dense, pruned[:, :2])
    for k in (0, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            lost_components(dense, pruned, k=k)
