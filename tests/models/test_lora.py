"""LoRA via PEFT: adapters are what trains and what gets scored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TRAIN

pytest.importorskip("peft")

from sample_effect import ComputeConfig, UpdateConfig, load_model
from sample_effect.cli.main import main
from sample_effect.data.examples import examples_from_records, tokenize_examples
from sample_effect.engine.vectors import TargetVector
from sample_effect.models.loading import select_parameters
from sample_effect.models.lora import apply_lora
from sample_effect.scoring.effects import compute_effects


def test_lora_model_scores_only_adapters_and_paths_agree(model_dirs):
    model, tok = load_model(model_dirs["qwen2"], "float64")
    wrapped = apply_lora(model, r=2)
    params = select_parameters(wrapped)
    assert params and all("lora_" in n for n in params)
    exs, _ = tokenize_examples(examples_from_records(list(enumerate(TRAIN, 1))), tok)
    gen = torch.Generator().manual_seed(0)
    G = TargetVector({n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}, "t")
    ref = compute_effects(wrapped, params, exs, G, UpdateConfig("sgd"), compute=ComputeConfig(progress=False))
    fast = compute_effects(wrapped, params, exs, G, UpdateConfig("sgd"), compute=ComputeConfig(progress=False, method="jvp"))
    np.testing.assert_allclose(fast.effect, ref.effect, rtol=1e-9, atol=1e-12)


def test_lora_sft_run_saves_adapter_and_merged_model(model_dirs, data_files, tmp_path):
    out = tmp_path / "run"
    assert main(["train-sft", "--model", str(model_dirs["llama"]), "--data", str(data_files["train"]), "--out", str(out),
                 "--steps", "3", "--batch-size", "2", "--lr", "1e-2", "--lora-r", "4", "--quiet"]) == 0
    final = out / "final"
    assert (final / "adapter" / "adapter_config.json").exists() and (final / "config.json").exists()
    blob = torch.load(final / "optimizer.pt", weights_only=True)
    assert all("lora_" in n for n in blob["param_names"])
    # The adapter directory scores its adapters; the merged model is a plain checkpoint.
    csv = tmp_path / "e.csv"
    assert main(["rank", "--model", str(final / "adapter"), "--data", str(data_files["train"]), "--target", "self",
                 "--out", str(csv), "--optimizer", "adamw", "--optimizer-state", str(final / "optimizer.pt"), "--quiet"]) == 0
    assert len(pd.read_csv(csv)) == 5
    merged, _ = load_model(final)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
