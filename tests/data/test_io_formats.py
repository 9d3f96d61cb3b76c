"""Input formats: Parquet files and `datasets` saved with save_to_disk, with field-name mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TARGET, TRAIN

from sample_effect import SampleEffectError, load_examples
from sample_effect.cli.main import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def renamed(rows: list[dict], id_col: str | None = "uid") -> list[dict]:
    out = []
    for r in rows:
        new = {"question": r["prompt"], "answer": r["response"]}
        if id_col:
            new[id_col] = r["id"]
        out.append(new)
    return out


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_parquet_with_field_mapping(tmp_path: Path) -> None:
    f = write_parquet(tmp_path / "d.parquet", renamed(TRAIN))
    exs = load_examples(f, id_field="uid", prompt_field="question", response_field="answer")
    assert [e.id for e in exs] == ["t0", "t1", "t2", "t3", "t4"]
    assert exs[2].responses == [TRAIN[2]["response"], TRAIN[3]["response"]]
    assert exs[0].prompt == TRAIN[0]["prompt"]
    # No id column: ids are 0-based row numbers, each row its own example.
    g = write_parquet(tmp_path / "noid.parquet", renamed(TRAIN, id_col=None))
    exs = load_examples(g, prompt_field="question", response_field="answer")
    assert [e.id for e in exs] == [str(i) for i in range(len(TRAIN))]


def test_parquet_bad_rows_name_row_and_field(tmp_path: Path) -> None:
    rows = renamed(TRAIN)
    rows[3]["answer"] = None
    f = write_parquet(tmp_path / "d.parquet", rows)
    with pytest.raises(SampleEffectError, match=r"d\.parquet: row 3: missing field 'answer'"):
        load_examples(f, id_field="uid", prompt_field="question", response_field="answer")
    g = write_parquet(tmp_path / "n.parquet", [{"id": "a", "prompt": 3, "response": "r"}])
    with pytest.raises(SampleEffectError, match=r"n\.parquet: row 0: field 'prompt' must be a string, got number"):
        load_examples(g)
    h = write_parquet(tmp_path / "e.parquet", [{"id": "a", "prompt": "p", "response": ""}])
    with pytest.raises(SampleEffectError, match=r"e\.parquet: row 0: example 'a' has an empty response"):
        load_examples(h)


def test_parquet_chat_messages(tmp_path: Path) -> None:
    conv = [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Bob."}]
    f = write_parquet(tmp_path / "c.parquet", [{"key": 7, "conv": conv}])
    (ex,) = load_examples(f, id_field="key", messages_field="conv")
    assert ex.id == "7" and ex.messages == [conv] and ex.responses == ["Bob."]


def test_saved_dataset_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN), "test": datasets.Dataset.from_list(TARGET)})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [e.id for e in load_examples(tmp_path / "dd", split="test")] == ["v0", "v1"]
    with pytest.raises(SampleEffectError, match=r"splits train, test; choose one with read_records\.split"):
        load_examples(tmp_path / "dd")
    with pytest.raises(SampleEffectError, match="no split 'dev'"):
        load_examples(tmp_path / "dd", split="dev")
    datasets.Dataset.from_list(TARGET).save_to_disk(str(tmp_path / "one"))
    assert len(load_examples(tmp_path / "one")) == 2
    with pytest.raises(SampleEffectError, match="not a DatasetDict"):
        load_examples(tmp_path / "one", split="train")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SampleEffectError, match="data path is a directory"):
        load_examples(tmp_path / "plain")


def test_rank_cli_parquet_and_dataset_equal_jsonl(tmp_path: Path, model_dirs, data_files) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(renamed(TRAIN))}).save_to_disk(str(tmp_path / "dd"))
    tgt = write_parquet(tmp_path / "t.parquet", renamed(TARGET))
    m = str(model_dirs["gpt2"])
    common = ["--model", m, "--quiet", "--optimizer", "adamw"]
    assert main(["rank", *common, "--data", str(data_files["train"]), "--target-data", str(data_files["target"]),
                 "--out", str(tmp_path / "a.csv")]) == 0
    fmt = ["--id-field", "uid", "--prompt-field", "question", "--response-field", "answer"]
    assert main(["rank", *common, "--data", str(tmp_path / "dd"), "--split", "train", "--target-data", str(tgt),
                 *fmt, "--out", str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_format_flags_reach_every_data_command() -> None:
    from sample_effect.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["train-sft", "--model", "m", "--data", "d.parquet", "--out", "o", "--prompt-field", "q"])
    assert args.prompt_field == "q"
    args = parser.parse_args(["validate", "linearization", "--model", "m", "--data", "d", "--target-data", "t",
                              "--out", "o", "--split", "train"])
    assert args.split == "train"
