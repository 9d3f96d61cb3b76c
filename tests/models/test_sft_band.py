"""After the demo's short SFT, the shipped `tiny` base solves a real share of fresh puzzles.

Issue 15 asks for greedy accuracy 40-85% on 2-person and 10-60% on 3-person puzzles after the
demo's SFT. The recipe here is the demo's RL start (`start_examples`: 160 fresh answer-only
puzzles, then `sft_recipe`: AdamW, 240 steps (`demo --start-steps`), lr 2e-4). No base model is
built here: the shipped one (build seeds 100-220) is fine-tuned on puzzles of seeds the build
never used (12_021 and 12_024) and scored on 24 puzzles per size of seeds 50_002 and 50_003.

Measured at seeds 7-10 with 240 steps: 2-person 0.667, 0.458, 0.500, 0.417 (mean 0.51);
3-person 0.250, 0.125, 0.125, 0.250 (mean 0.19). Every seed is inside both bands. With the
earlier 120 steps the 3-person mean was 0.094, just under the band (0.042, 0.125, 0.042, 0.167);
320 examples at 240 steps gave 0.48 and 0.20, and lr 4e-4 at 120 steps 0.48 and 0.094.
"""

from __future__ import annotations

import pytest
import torch

from sample_effect.data.kk import generate_puzzles, puzzle_record
from sample_effect.models.loading import load_model
from sample_effect.models.registry import resolve_model
from sample_effect.recipes.kk_demo import sft_recipe, start_examples
from sample_effect.recipes.kk_demo_config import START_STEPS
from sample_effect.rollouts.generation import greedy_accuracy
from sample_effect.rollouts.rewards import get_reward
from sample_effect.training import train_sft

SEEDS = (7, 8)  # demo seeds: RL-start puzzles of seeds 12_021 and 12_024, never the build's


def demo_sft_accuracy(seed: int) -> dict[int, float]:
    """Greedy accuracy on 24 fresh 2- and 3-person puzzles after the demo's answer-only RL-start SFT."""
    model, tok = load_model(resolve_model("tiny"), "float32")
    train = start_examples(160, seed, "answer-only", tok)
    torch.manual_seed(seed)
    train_sft(model, tok, train, sft_recipe(steps=START_STEPS, seed=seed), progress=False)
    reward = get_reward("kk")
    acc = {}
    for people in (2, 3):
        puzzles = generate_puzzles(people, 24, seed=50_000 + people)
        items = [(r["prompt"], r["answer"]) for r in (puzzle_record(p, "answer-only", seed=50_000) for p in puzzles)]
        acc[people], _ = greedy_accuracy(model.eval(), tok, items, reward, 400)
    return acc


@pytest.mark.slow
def test_demo_sft_solves_fresh_puzzles():
    torch.set_num_threads(1)
    runs = [demo_sft_accuracy(s) for s in SEEDS]
    two, three = (sum(r[n] for r in runs) / len(runs) for n in (2, 3))
    print(f"greedy accuracy after the demo's SFT, seeds {SEEDS}: {runs}")
    assert 0.40 <= two <= 0.85, runs  # measured 0.5625 (0.667, 0.458); seeds 9, 10: 0.500, 0.417
    assert 0.10 <= three <= 0.60, runs  # measured 0.1875 (0.250, 0.125); seeds 9, 10: 0.125, 0.250
