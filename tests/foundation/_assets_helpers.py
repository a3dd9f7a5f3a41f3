"""Shared by the model-cache tests: ``convert_gguf`` with its GGUF loading replaced by a
tiny model, so that its own code (temporary directory, marker, rename) runs as is."""

from contextlib import contextmanager

import pytest

from restorelcc.testing import byte_tokenizer, tiny_config, tiny_model


@contextmanager
def tiny_gguf_loading():
    """Within it, transformers "loads" any GGUF as the tiny ``llama-mha`` model."""
    import transformers

    config, quantized, plain = (
        tiny_config("llama-mha"),
        tiny_model("llama-mha"),
        tiny_model("llama-mha"),
    )
    mp = pytest.MonkeyPatch()
    try:
        auto_model = transformers.AutoModelForCausalLM
        mp.setattr(auto_model, "from_pretrained", lambda *a, **k: quantized)
        mp.setattr(auto_model, "from_config", lambda *a, **k: plain)
        mp.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: config)
        mp.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: byte_tokenizer())
        yield
    finally:
        mp.undo()
