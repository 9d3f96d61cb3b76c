"""Imitation sources: rejection-sampling fine-tuning, distillation, source comparison, markers and token banning."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import CORPUS, TARGET, TRAIN, write_jsonl

from sample_effect.analysis.markers import TokenBan, banned_token_ids, marker_table
from sample_effect.cli.main import main
from sample_effect.data.examples import load_examples, tokenize_examples
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import load_model
from sample_effect.models.tiny import build_tiny_model, save_model, train_tokenizer
from sample_effect.rollouts.generation import prompt_ids, sample
from sample_effect.training.imitation import (
    check_same_tokenizer,
    onpolicy_batch,
    onpolicy_loss,
    policy_entropy,
    reverse_kl_loss,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one thread is several times faster than contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PROMPTS = [{"id": f"p{i}", "prompt": t[:20], "answer": "x"} for i, t in enumerate(CORPUS[:4])]
EVALS = [{"id": f"e{i}", "prompt": t[:15], "answer": "x"} for i, t in enumerate(CORPUS[4:])]


@pytest.fixture(scope="module")
def rl_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imi")
    (d / "rewmod_imi.py").write_text(
        "def has_e(prompt, completion, answer, finished=True):\n    return 1.0 if 'e' in completion.lower() else 0.0\n"
    )
    return {"dir": d, "prompts": write_jsonl(d / "p.jsonl", PROMPTS), "evals": write_jsonl(d / "e.jsonl", EVALS)}


# ------------------------------------------------------------------ RFT


def test_rft_training_reward_rises(model_dirs, rl_files, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(rl_files["dir"]))
    out = tmp_path / "rft"
    rc = main(["rft", "--model", str(model_dirs["gpt2"]), "--prompts", str(rl_files["prompts"]), "--eval-prompts",
               str(rl_files["evals"]), "--reward", "rewmod_imi:has_e", "--out", str(out), "--rounds", "2",
               "--samples-per-prompt", "8", "--max-new-tokens", "4", "--eval-max-new-tokens", "4", "--lr", "1e-2",
               "--steps", "10", "--batch-size", "8", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    m = pd.read_csv(out / "metrics.csv")
    assert list(m["round"]) == [0, 1, 2]
    assert m["train_reward"].iloc[-1] >= m["train_reward"].iloc[0] + 0.2
    assert (m["entropy"] > 0).all() and m["entropy"].iloc[-1] < m["entropy"].iloc[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_reward"] == pytest.approx(list(m["train_reward"]))
    kept = [json.loads(x) for x in (out / "round-00.jsonl").read_text().splitlines()]
    assert len(kept) == m["n_kept"].iloc[0] > 0 and all("e" in r["response"].lower() for r in kept)
    assert (out / "final" / "config.json").exists()
    # an existing run is not replaced without --overwrite
    assert main(["rft", "--model", str(model_dirs["gpt2"]), "--prompts", str(rl_files["prompts"]), "--eval-prompts",
                 str(rl_files["evals"]), "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_policy_entropy_equals_hand_computation(model_dirs):
    model, tok = load_model(model_dirs["llama"], "float64")
    prompt = "Alice said, Bob"
    ent, samples = policy_entropy(model, tok, [prompt], 1, 5, torch.Generator().manual_seed(3))
    (_, comp), = samples
    # by hand: one forward pass per prefix, entropy -sum p log p of the last position's softmax
    p_ids = prompt_ids(tok, prompt)
    hand = []
    for t in range(len(comp.token_ids)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p_ids + comp.token_ids[:t]])).logits[0, -1]
        probs = torch.softmax(logits, -1)
        hand.append(float(-(probs * probs.log()).sum()))
    assert len(hand) == len(comp.token_ids) >= 1
    assert ent == pytest.approx(sum(hand) / len(hand), rel=1e-9)


# ------------------------------------------------------------------ distillation


def test_reverse_kl_two_token_hand_computation():
    s = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [9.0, 9.0, 9.0]]], dtype=torch.float64)
    t = torch.tensor([[[0.0, 1.0, 0.0], [2.0, -1.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    hand = 0.0
    for pos in range(2):
        ps = [float(x) for x in torch.softmax(s[0, pos], -1)]
        pt = [float(x) for x in torch.softmax(t[0, pos], -1)]
        import math

        hand += sum(a * (math.log(a) - math.log(b)) for a, b in zip(ps, pt))
    assert float(reverse_kl_loss(s, t, mask)) == pytest.approx(hand / 2, rel=1e-12)


def test_onpolicy_loss_matches_hand_and_is_zero_for_self(model_dirs):
    student, tok = load_model(model_dirs["llama"], "float64")
    teacher, _ = load_model(model_dirs["qwen2"], "float64")
    same, _ = load_model(model_dirs["llama"], "float64")
    prompt = "Alice said,"
    comp = list(tok(" Bob is", add_special_tokens=False)["input_ids"])[:2]
    assert len(comp) == 2
    ids, mask = onpolicy_batch(tok, [prompt], [comp], "cpu")
    loss = onpolicy_loss(student, teacher, ids, mask)
    p = prompt_ids(tok, prompt)
    hand = []
    for t in range(2):
        x = torch.tensor([p + comp[:t]])
        with torch.no_grad():
            ls = torch.log_softmax(student(input_ids=x).logits[0, -1], -1)
            lt = torch.log_softmax(teacher(input_ids=x).logits[0, -1], -1)
        hand.append(float((ls.exp() * (ls - lt)).sum()))
    assert loss.item() == pytest.approx(sum(hand) / 2, rel=1e-9)
    assert loss.item() > 0
    assert onpolicy_loss(student, same, ids, mask).item() == 0.0
    loss.backward()  # gradients reach the student only
    assert any(q.grad is not None for q in student.parameters())
    assert all(q.grad is None for q in teacher.parameters())


@pytest.fixture(scope="module")
def other_tok_model(tmp_path_factory):
    tok2 = train_tokenizer([c.upper() for c in CORPUS] * 5, vocab_size=300)
    d = tmp_path_factory.mktemp("othertok") / "m"
    save_model(build_tiny_model("llama", tok2, torch.float32, seed=5), tok2, d)
    return d


def test_mismatched_tokenizers_clear_error(model_dirs, other_tok_model, rl_files, tmp_path, capsys, tokenizer):
    _, tok2 = load_model(other_tok_model, "float32")
    with pytest.raises(SampleEffectError, match="do not share a tokenizer"):
        check_same_tokenizer(tokenizer, tok2)
    rc = main(["distill", "--model", str(model_dirs["llama"]), "--teacher", str(other_tok_model), "--prompts",
               str(rl_files["prompts"]), "--out", str(tmp_path / "d"), "--on-policy", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "do not share a tokenizer" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_init_tiny_student_shares_teacher_tokenizer_and_distils(model_dirs, other_tok_model, rl_files, tmp_path, capsys):
    """init-tiny copies a teacher's tokenizer and logit width, so distill accepts the pair (it refuses the shipped-style mismatch)."""
    _, tok2 = load_model(other_tok_model, "float32")
    # a teacher whose output layer is wider than its tokenizer (padded embeddings, as many real checkpoints)
    teacher = tmp_path / "teacher"
    save_model(build_tiny_model("qwen2", tok2, torch.float32, seed=9, vocab_size=len(tok2) + 5), tok2, teacher)
    student = tmp_path / "student"
    rc = main(["init-tiny", "--tokenizer-from", str(teacher), "--out", str(student), "--arch", "llama", "--hidden", "16",
               "--layers", "1", "--heads", "2", "--seed", "3", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert "logits per token" in capsys.readouterr().out
    s_model, s_tok = load_model(student, "float32")
    check_same_tokenizer(s_tok, tok2)
    assert s_tok.eos_token_id == tok2.eos_token_id and s_tok.chat_template == tok2.chat_template
    assert s_model.get_output_embeddings().weight.shape[0] == len(tok2) + 5
    assert s_model.config.hidden_size == 16 and s_model.config.num_hidden_layers == 1
    # seeded: the same command gives the same weights
    again = tmp_path / "again"
    assert main(["init-tiny", "--tokenizer-from", str(teacher), "--out", str(again), "--arch", "llama", "--hidden", "16",
                 "--layers", "1", "--heads", "2", "--seed", "3", "--quiet"]) == 0
    a_model, _ = load_model(again, "float32")
    assert all(torch.equal(x, y) for x, y in zip(s_model.state_dict().values(), a_model.state_dict().values()))
    # the pair distils on-policy
    on = tmp_path / "on"
    rc = main(["distill", "--model", str(student), "--teacher", str(teacher), "--prompts", str(rl_files["prompts"]),
               "--out", str(on), "--on-policy", "--steps", "2", "--max-new-tokens", "3", "--prompts-per-step", "2", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    m = pd.read_csv(on / "metrics.csv")
    assert list(m["step"]) == [1, 2] and torch.isfinite(torch.tensor(m["reverse_kl"].to_numpy())).all()
    # --chat-template: the teacher is prompted (and the student trained) in the shared chat format
    off = tmp_path / "off"
    rc = main(["distill", "--model", str(student), "--teacher", str(teacher), "--prompts", str(rl_files["prompts"]),
               "--out", str(off), "--no-filter", "--chat-template", "--max-new-tokens", "3", "--steps", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    recs = [json.loads(x) for x in (off / "teacher_data.jsonl").read_text().splitlines()]
    assert recs and all(r["prompt"].startswith("<|user|>\n") and r["prompt"].endswith("<|assistant|>\n") for r in recs)
    # a student built from another model's tokenizer is still refused
    rc = main(["distill", "--model", str(student), "--teacher", str(model_dirs["qwen2"]), "--prompts",
               str(rl_files["prompts"]), "--out", str(tmp_path / "x"), "--on-policy", "--quiet"])
    assert rc == 2 and "do not share a tokenizer" in capsys.readouterr().err
    # bad sizes and a non-empty --out fail before building anything
    assert main(["init-tiny", "--tokenizer-from", str(teacher), "--out", str(tmp_path / "y"), "--hidden", "10",
                 "--heads", "4", "--quiet"]) == 2
    assert "must divide --hidden" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["init-tiny", "--tokenizer-from", str(teacher), "--out", str(student), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["init-tiny", "--tokenizer-from", str(tmp_path / "nope"), "--out", str(tmp_path / "z"), "--quiet"]) == 2
    assert "no model directory" in capsys.readouterr().err


def test_distill_offpolicy_writes_sft_jsonl_and_onpolicy_runs(model_dirs, rl_files, tmp_path, capsys):
    out = tmp_path / "off"
    rc = main(["distill", "--model", str(model_dirs["llama"]), "--teacher", str(model_dirs["qwen2"]), "--prompts",
               str(rl_files["prompts"]), "--out", str(out), "--no-filter", "--samples-per-prompt", "2",
               "--max-new-tokens", "4", "--steps", "2", "--batch-size", "4", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    recs = [json.loads(x) for x in (out / "teacher_data.jsonl").read_text().splitlines()]
    assert recs and all({"id", "prompt", "response"} <= set(r) for r in recs)
    exs = load_examples(out / "teacher_data.jsonl")
    _, tok = load_model(model_dirs["llama"], "float32")
    tokenize_examples(exs, tok)  # valid SFT data
    assert (out / "final" / "config.json").exists() and (out / "metrics.csv").exists()

    on = tmp_path / "on"
    rc = main(["distill", "--model", str(model_dirs["llama"]), "--teacher", str(model_dirs["qwen2"]), "--prompts",
               str(rl_files["prompts"]), "--out", str(on), "--on-policy", "--steps", "3", "--max-new-tokens", "4",
               "--prompts-per-step", "2", "--lr", "1e-2", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    m = pd.read_csv(on / "metrics.csv")
    assert list(m["step"]) == [1, 2, 3] and (m["reverse_kl"] > 0).all()
    assert main(["distill", "--model", str(model_dirs["llama"]), "--teacher", str(model_dirs["qwen2"]), "--prompts",
                 str(rl_files["prompts"]), "--out", str(tmp_path / "x"), "--on-policy", "--no-filter", "--quiet"]) == 2
    assert "--no-filter applies to off-policy" in capsys.readouterr().err


# ------------------------------------------------------------------ compare-sources


def test_compare_sources_table_and_figure(model_dirs, tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", TRAIN[:3])
    b = write_jsonl(tmp_path / "b.jsonl", [*TRAIN[3:], {"id": "t9", "prompt": "Bob said,", "response": "Bob is a knave."}])
    tgt = write_jsonl(tmp_path / "tgt.jsonl", TARGET)
    out = tmp_path / "cmp.csv"
    rc = main(["compare-sources", "--source", f"short={a}", "--source", f"long={b}", "--model", str(model_dirs["gpt2"]),
               "--dtype", "float64", "--target-data", str(tgt), "--out", str(out), "--train-steps", "2", "--lr", "1e-3",
               "--bootstrap", "200", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    t = pd.read_csv(out)
    assert list(t["source"]) == ["short", "long"] and list(t["n"]) == [3, 4]
    assert ((t["ci_low"] <= t["effect_mean"]) & (t["effect_mean"] <= t["ci_high"])).all()
    assert {"actual_gain", "target_loss_before", "target_loss_after"} <= set(t.columns)
    assert t["target_loss_before"].nunique() == 1  # same start for every source
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert main(["compare-sources", "--source", "nofile", "--model", str(model_dirs["gpt2"]), "--target-data", str(tgt),
                 "--out", str(tmp_path / "z.csv"), "--quiet"]) == 2
    assert "NAME=FILE" in capsys.readouterr().err


# ------------------------------------------------------------------ markers


def test_marker_counts_per_1k(tmp_path):
    texts = ["Wait, let me think. So Bob is a knave.", "Hmm... perhaps. But so what? LET  ME see; therefore done.",
             "no markers here, awaiting sober butter"]
    table = marker_table({"f": texts}, {"anth": ["wait", "hmm", "perhaps", "let me"], "log": ["but", "so", "therefore"]})
    row = table.set_index(["set", "marker"]).loc
    assert row[("anth", "let me"), "count"] == 2 and row[("anth", "wait"), "count"] == 1
    assert row[("log", "so"), "count"] == 2 and row[("log", "but"), "count"] == 1  # not "sober"/"butter"
    tokens = sum(len(t.split()) for t in texts)
    assert row[("anth", "*"), "count"] == 5
    assert row[("anth", "*"), "per_1k"] == pytest.approx(5000 / tokens)
    assert row[("log", "*"), "completions_with"] == 2


def test_token_ban_forbids_argmax_tokens(model_dirs):
    model, tok = load_model(model_dirs["llama"], "float64")
    prompt = "Alice said,"
    free = sample(model, tok, prompt, 1, 8, 0.0)[0].token_ids
    banned = set(free) - {tok.eos_token_id}
    assert banned
    ban = TokenBan(single=banned)
    with_ban = sample(model, tok, prompt, 1, 8, 0.0, logits_processor=ban)[0].token_ids
    assert not banned & set(with_ban) and len(with_ban) >= 1
    sampled = sample(model, tok, prompt, 16, 8, 1.0, torch.Generator().manual_seed(0), logits_processor=ban)
    assert not any(banned & set(c.token_ids) for c in sampled)
    # a multi-token ban only forbids the last token right after its prefix
    a, b = free[0], free[1] if len(free) > 1 else free[0]
    seq_ban = TokenBan(sequences=[(a, b)])
    out = seq_ban(torch.tensor([[5, a], [a, 5]]), torch.zeros(2, model.config.vocab_size, dtype=torch.float64))
    assert out[0, b] == float("-inf") and out[1, b] == 0.0


def test_banned_ids_cover_word_variants(tokenizer):
    ban = banned_token_ids(tokenizer, ["knight", "so"])
    for v in ("knight", " knight", "So", " so"):
        ids = tokenizer(v, add_special_tokens=False)["input_ids"]
        assert (len(ids) == 1 and ids[0] in ban.single) or tuple(ids) in ban.sequences


def test_markers_cli_ban_eval_and_effects(model_dirs, rl_files, tmp_path, capsys):
    rows = [{"id": "m0", "prompt": "Alice said,", "response": "Wait, so Bob is a knight."},
            {"id": "m1", "prompt": "Bob said,", "response": "Bob is a knave."},
            {"id": "m2", "prompt": "Eve said,", "response": "Hmm, therefore Eve is a knight."}]
    f = write_jsonl(tmp_path / "c.jsonl", rows)
    tgt = write_jsonl(tmp_path / "tgt.jsonl", TARGET)
    out = tmp_path / "mk.csv"
    rc = main(["markers", str(f), "--model", str(model_dirs["llama"]), "--out", str(out), "--ban-eval", "--prompts",
               str(rl_files["prompts"]), "--reward", "exact", "--max-new-tokens", "4", "--effects", "--target-data",
               str(tgt), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "mk.json").read_text())
    assert s["tokens"] == "tokenizer" and s["ban_eval"]["prompts"] == len(PROMPTS)
    assert s["effects"]["with_markers"]["n"] == 2 and s["effects"]["without_markers"]["n"] == 1
    assert len(pd.read_csv(out)) > 0
    assert main(["markers", "--out", str(tmp_path / "e.csv"), "--quiet"]) == 2
    assert "give JSONL files" in capsys.readouterr().err
