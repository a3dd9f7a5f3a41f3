"""Public entry points refuse bad arguments with a ValueError naming them: choose_plan's
m and dtype, prepare_streams on the meta device, a decode_streams that is not a bool,
to_torch_semi_structured off CUDA; and a 2:4 violation counts its groups in words."""

import numpy as np
import pytest
import torch
from _kernels_helpers import random_24, random_unstructured

from lcc_kernels import choose_plan, pack, prepare_streams, sparse_linear, to_torch_semi_structured

CPU = torch.device("cpu")
N, K = 23, 136


@pytest.mark.parametrize("backend", ["auto", "reference", "skinny"])
def test_choose_plan_refuses_an_m_that_is_not_a_non_negative_int(backend):
    packed = pack(random_24(N, K))
    for m in (-1, 1.5, True, "3", torch.tensor(3.0)):
        with pytest.raises(ValueError, match=r"m \(rows of x\) must be a non-negative int"):
            choose_plan(m, packed, torch.float32, CPU, backend)
    for m in (0, 17, np.int64(3), torch.tensor(3)):
        choose_plan(m, packed, torch.float32, CPU, backend)


@pytest.mark.parametrize("backend", ["auto", "reference", "skinny", "streams"])
def test_choose_plan_refuses_an_unsupported_dtype(backend):
    packed = pack(random_unstructured(N, K, 0.4), "bitmap", tile=(16, 32))
    for dtype in (torch.float64, torch.int32, "float32"):
        with pytest.raises(ValueError, match="dtype must be one of .*'float32'.*, got"):
            choose_plan(3, packed, dtype, CPU, backend)


def test_prepare_streams_refuses_a_weight_on_the_meta_device():
    packed = pack(random_unstructured(N, K, 0.4), "bitmap", tile=(16, 32)).to("meta")
    with pytest.raises(ValueError, match="the weight is on the meta device .*: the streams"):
        prepare_streams(packed)


@pytest.mark.parametrize("value", ["yes", 1, None, np.bool_(True)])
def test_sparse_linear_refuses_a_decode_streams_that_is_not_a_bool(value):
    packed = pack(random_24(N, K))
    with pytest.raises(ValueError, match="decode_streams must be True or False, got"):
        sparse_linear(torch.randn(3, K), packed, decode_streams=value)


def test_to_torch_semi_structured_names_a_weight_off_cuda():
    with pytest.raises(ValueError, match="built on CUDA only, the weight is on cpu"):
        to_torch_semi_structured(pack(random_24(16, 64)))


def test_a_2_4_violation_counts_its_groups_in_words():
    weight = random_24(3, 16)
    weight[1, 4:8] = 1.0  # one group of 4 nonzeros
    with pytest.raises(ValueError, match=r"\(1 group violates it\)"):
        pack(weight)
    weight[2, 8:12] = 1.0
    with pytest.raises(ValueError, match=r"\(2 groups violate it\)"):
        pack(weight)
