"""The shipped `tiny-v2` base model solves fresh puzzles in its base format (no SFT)."""

from __future__ import annotations

import json

from sample_effect.data.kk import generate_puzzles, quiz_text
from sample_effect.models.loading import load_model
from sample_effect.models.registry import TINY_V2, resolve_model
from sample_effect.rollouts.generation import sample


def test_tiny_v2_solves_fresh_two_person_puzzles_greedily():
    """Seed 777 is not the corpus seed (100) nor its evaluation seed (101); measured 9 / 24 here."""
    model, tok = load_model(resolve_model("tiny-v2"), "float32")
    info = json.loads((TINY_V2 / "build_info.json").read_text())
    assert info["params"] == sum(p.numel() for p in model.parameters())
    right = 0
    for p in generate_puzzles(2, 24, seed=777):
        text = sample(model, tok, f"Question:\n{quiz_text(p, 100)}\nAnswer:\n", n=1, max_new_tokens=400)[0].text
        right += f"So the answer is: {p.answer}." in text
        assert "\\boxed" not in text  # the base model does not know the SFT answer format
    # Guessing roles with the right names in order would get 6 / 24 on average; the 685K base solves 0 (it cannot copy names).
    assert right >= 7


def test_tiny_base_does_not_write_the_sft_answer_format_from_the_sft_prompt():
    """The property the paper relies on: the base reasons from the SFT prompt but never answers in \\boxed{}."""
    from sample_effect.data.kk import prompt_text

    model, tok = load_model(resolve_model("tiny"), "float32")
    texts = [sample(model, tok, prompt_text(p, 778), n=1, max_new_tokens=300)[0].text for p in generate_puzzles(2, 8, seed=778)]
    assert not any("\\boxed" in t for t in texts)
    assert sum("So the answer is:" in t for t in texts) >= 6  # it does answer, in its own format
