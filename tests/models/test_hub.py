"""Hugging Face Hub ids (`org/name`) for models, adapters' bases and data, tested offline: a local cache laid out
as the Hub's (HF_HOME/hub/models--org--name/snapshots/<hash>/ + refs/main) and HF_HUB_OFFLINE=1. huggingface_hub
reads those variables at import, so the offline checks run in a fresh interpreter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sample_effect import load_examples, load_model
from sample_effect.errors import SampleEffectError
from sample_effect.hub import hub_id
from sample_effect.models.registry import TINY, resolve_model

ROOT = Path(__file__).resolve().parents[2]
REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(home: Path, repo: str, source: Path) -> Path:
    """Lay `source` out as the cached snapshot of model repo `repo` under `home`/hub; return the snapshot."""
    entry = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / REVISION
    shutil.copytree(source, snapshot)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(REVISION)
    return snapshot


def offline_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1"}


OFFLINE_CHECKS = r"""
import json, sys
from pathlib import Path

import pandas as pd
import torch

from sample_effect import load_model
from sample_effect.cli.main import main
from sample_effect.data.examples import load_examples
from sample_effect.errors import SampleEffectError

local, adapter, train, target, out = (Path(a) for a in sys.argv[1:6])
hub, hub_tok = load_model("sample-effect/tiny-test", "float64")
ref, ref_tok = load_model(local, "float64")
assert hub_tok.get_vocab() == ref_tok.get_vocab()
assert [n for n, _ in hub.named_parameters()] == [n for n, _ in ref.named_parameters()]
assert all(torch.equal(a, b) for a, b in zip(hub.parameters(), ref.parameters()))

# a PEFT adapter whose base is the Hub id
wrapped, _ = load_model(adapter, "float64")
assert any("lora_" in n for n, p in wrapped.named_parameters() if p.requires_grad)

# the CLI, from the Hub id and from the directory: the same ranking
base = ["rank", "--data", str(train), "--target-data", str(target), "--quiet"]
assert main([*base, "--model", "sample-effect/tiny-test", "--out", str(out / "hub.csv")]) == 0
assert main([*base, "--model", str(local), "--out", str(out / "local.csv")]) == 0
a, b = pd.read_csv(out / "hub.csv"), pd.read_csv(out / "local.csv")
assert a["id"].tolist() == b["id"].tolist() and a["effect"].tolist() == b["effect"].tolist()

errors = {}
for name, call in (("model", lambda: load_model("sample-effect/not-cached")),
                   ("data", lambda: load_examples("sample-effect/no-such-dataset", split="train"))):
    try:
        call()
    except SampleEffectError as exc:
        errors[name] = str(exc)
print(json.dumps(errors))
"""


def test_hub_model_adapter_and_cli_offline(model_dirs, data_files, tmp_path) -> None:
    pytest.importorskip("peft")
    from sample_effect.models.lora import apply_lora

    home = tmp_path / "hf"
    hub_cache(home, "sample-effect/tiny-test", model_dirs["gpt2"])
    base, _ = load_model(model_dirs["gpt2"], "float64")
    adapter = tmp_path / "adapter"
    apply_lora(base, 2).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "sample-effect/tiny-test"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_CHECKS, str(model_dirs["gpt2"]), str(adapter), str(data_files["train"]),
         str(data_files["target"]), str(tmp_path)],
        env=offline_env(home), cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert errors["model"].startswith("'sample-effect/not-cached' is not a local path, and a tokenizer with this Hugging "
                                      "Face Hub id could not be loaded (HF_HUB_OFFLINE is set, so only the local Hugging "
                                      "Face cache was searched, and it is not there)")
    assert errors["data"].startswith("'sample-effect/no-such-dataset' is not a local path, and a dataset with this "
                                     "Hugging Face Hub id could not be loaded (HF_HUB_OFFLINE is set")


def test_hub_id_is_only_a_missing_org_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert hub_id("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    (tmp_path / "runs" / "final").mkdir(parents=True)
    assert hub_id("runs/final") is None  # an existing local directory wins
    for path in ("data/train.jsonl", "a/b/c", "/abs/dir", "./x/y", "tiny", "org/", "../x", "org/na..me"):
        assert hub_id(path) is None, path
    assert resolve_model("runs/final") == Path("runs/final")
    assert resolve_model("org/name") == "org/name"


def test_builtin_names_load_from_python() -> None:
    model, _ = load_model("tiny")
    ref, _ = load_model(TINY)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))
    with pytest.raises(SampleEffectError, match="model directory not found: no/such/dir"):
        load_model("no/such/dir")


def test_hub_dataset_id_goes_to_load_dataset_with_the_split(tmp_path, monkeypatch) -> None:
    """A hand-made offline cache of a Hub *dataset* does not load (`datasets` wants its own processed cache), so this
    checks the dispatch: the id and --split reach `datasets.load_dataset`, and its DatasetDict / Dataset is read."""
    datasets = pytest.importorskip("datasets")
    rows = [{"id": "a", "prompt": "p", "response": "r"}, {"id": "b", "prompt": "q", "response": "s"}]
    calls = []

    def fake_load_dataset(path, split=None, **kwargs):
        calls.append((path, split))
        if split is None:
            return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])})
        return datasets.Dataset.from_list(rows if split == "train" else rows[:1])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)
    assert [e.id for e in load_examples("org/sft-data", split="test")] == ["a"]
    assert calls[-1] == ("org/sft-data", "test")
    with pytest.raises(SampleEffectError, match="org/sft-data is a DatasetDict with splits train, test; choose one with"):
        load_examples("org/sft-data")
    from sample_effect.cli.main import main

    code = main(["rank", "--model", "tiny", "--data", "org/sft-data", "--split", "train", "--target", "self", "--out",
                 str(tmp_path / "r.csv"), "--quiet"])
    assert code == 0 and calls[-1] == ("org/sft-data", "train")
    assert sorted(pd.read_csv(tmp_path / "r.csv")["id"]) == ["a", "b"]
    assert not any(c[0] == "data/train.jsonl" for c in calls)
    with pytest.raises(SampleEffectError, match=r"data file not found: data/train\.jsonl"):
        load_examples("data/train.jsonl")
