import subprocess
import sys

import pytest

import restorelcc


def test_every_lazy_export_resolves():
    for name in restorelcc._LAZY_EXPORTS:
        assert getattr(restorelcc, name).__name__ == name
    assert set(restorelcc._LAZY_EXPORTS) <= set(dir(restorelcc))


def test_import_does_not_pull_in_torch():
    code = "import sys, restorelcc; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_star_import_gives_exactly_all_and_each_name_resolves():
    """``from restorelcc import *`` had given ``importlib`` alone (no ``__all__``)."""
    namespace = {}
    exec("from restorelcc import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(restorelcc.__all__)
    assert len(set(restorelcc.__all__)) == len(restorelcc.__all__)
    for name in restorelcc.__all__:
        assert namespace[name] is getattr(restorelcc, name)
        assert namespace[name].__name__ == name


def test_the_two_steps_of_restore_and_the_errors_are_exported():
    from restorelcc import errors
    from restorelcc.hf.swap_plan import SwapError
    from restorelcc.lcc import AdapterMismatchError, plan_heads, train_heads

    assert restorelcc.plan_heads is plan_heads and restorelcc.train_heads is train_heads
    assert restorelcc.SwapError is SwapError
    assert restorelcc.AdapterMismatchError is AdapterMismatchError
    assert issubclass(restorelcc.AdapterError, restorelcc.RestoreLCCError)
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.RestoreLCCError)
    }
    assert "RestoreLCCError" in defined and defined <= set(restorelcc.__all__)


def test_hf_exports_the_swap_without_importing_torch():
    code = (
        "import sys, restorelcc.hf as hf; ns = {}; exec('from restorelcc.hf import *', ns)\n"
        "print('torch' in sys.modules, sorted(hf.__all__) == sorted(set(ns) - {'__builtins__'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # the star import resolves the lazy names, so torch is in by then: import first
    assert out.stdout.split() == ["True", "True"]
    code = "import sys, restorelcc.hf; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

    from restorelcc.hf import SwapError, SwapReport, swap_attention, unswap_attention
    from restorelcc.hf import swap as swap_module

    assert swap_attention is swap_module.swap_attention
    assert unswap_attention is swap_module.unswap_attention
    assert SwapReport is swap_module.SwapReport and SwapError is restorelcc.SwapError
    with pytest.raises(AttributeError, match="'restorelcc.hf' has no attribute 'nonsense'"):
        restorelcc.hf.nonsense  # noqa: B018


def test_check_config_named_in_prune_models_docstring_is_exported():
    import restorelcc.prune as prune
    from restorelcc.testing import tiny_config

    assert "check_config" in prune.__doc__ + prune.prune_model.__doc__
    assert {"check_config", "check_spec", "PruneSpec"} <= set(prune.__all__)
    config = tiny_config("llama-3x5")  # hidden 60: 2:4 fits, 4:8 does not
    prune.check_config(config, prune.check_spec("magnitude", 0.5, "2:4"))
    with pytest.raises(prune.PruneArgumentError, match="8"):
        prune.check_config(config, prune.check_spec("magnitude", 0.5, "4:8"))
