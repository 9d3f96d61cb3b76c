"""Knights-and-Knaves generator and rewards."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sample_effect import SampleEffectError
from sample_effect.data.kk import STYLES, generate_puzzles, puzzle_record
from sample_effect.rollouts.rewards import get_reward


def independent_truth(stmt, world):
    """A second evaluator written apart from kk.evaluate."""
    table = {
        "knight": lambda j: world[j],
        "knave": lambda j: not world[j],
    }
    head, *rest = stmt
    if head in table:
        return table[head](rest[0])
    vals = [independent_truth(s, world) for s in rest]
    return {
        "not": lambda v: not v[0],
        "and": lambda v: v[0] and v[1],
        "or": lambda v: v[0] or v[1],
        "implies": lambda v: v[1] if v[0] else True,
        "iff": lambda v: v[0] is v[1],
    }[head](vals)


@settings(max_examples=25, deadline=None)
@given(people=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_every_puzzle_has_exactly_its_solution(people, seed):
    puzzles = generate_puzzles(people, 3, seed=seed)
    assert len({str(p.statements) for p in puzzles}) == len(puzzles)
    for p in puzzles:
        assert len(set(p.names)) == people
        for i, s in enumerate(p.statements):
            assert s != ["knave", i]  # never "I am a knave"
            if s[0] in ("and", "or", "implies", "iff"):
                assert s[1] != s[2]
        worlds = [w for w in itertools.product([True, False], repeat=people)
                  if all(w[i] == independent_truth(s, w) for i, s in enumerate(p.statements))]
        assert worlds == [tuple(p.solution)]


def test_generation_is_reproducible_and_styles_are_correct():
    a = [puzzle_record(p, "long-cot", 5) for p in generate_puzzles(4, 5, seed=5)]
    b = [puzzle_record(p, "long-cot", 5) for p in generate_puzzles(4, 5, seed=5)]
    assert a == b
    kk = get_reward("kk")
    for p in generate_puzzles(3, 5, seed=1):
        for style in STYLES:
            rec = puzzle_record(p, style)
            assert kk(rec["prompt"], rec["response"], rec["answer"]) == 1.0
    long = puzzle_record(generate_puzzles(5, 1, seed=3)[0], "long-cot")["response"]
    assert "Assume" in long and "verify" in long


def test_kk_reward_edge_cases():
    kk = get_reward("kk")
    ans = "Alice is a knight, Bob is a knave"
    assert kk("", r"so \boxed{Bob is a knave, Alice is a knight}", ans) == 1.0  # reordered names
    assert kk("", "no box here", ans) == 0.0
    assert kk("", r"\boxed{Alice is a knave, Bob is a knave} then \boxed{Alice is a knight, Bob is a knave}", ans) == 1.0
    assert kk("", r"\boxed{Alice is a knight, Bob is a knave} then \boxed{Alice is a knave}", ans) == 0.0
    assert kk("", r"\boxed{Alice is a knight, Bob is a knave}", ans, finished=False) == 0.0  # truncated
    assert kk("", r"\boxed{Alice is a knight}", ans) == 0.0
    assert get_reward("boxed")("", r"\boxed{42}", "42") == 1.0
    part = get_reward("kk-partial")
    assert part("", r"\boxed{Bob is a knave, Alice is a knight}", ans) == 1.0
    assert part("", r"\boxed{Alice is a knight, Bob is a knight}", ans) == 0.5
    assert part("", r"\boxed{Alice is a knight}", ans) == 0.5  # one person named, rightly
    assert part("", r"\boxed{Alice is a knave, Bob is a knight}", ans) == 0.0
    assert part("", r"\boxed{Alice is a knight, Alice is a knave, Bob is a knave}", ans) == 0.0  # no credit for hedging
    assert part("", r"\boxed{Alice is a knight, Bob is a knave}", ans, finished=False) == 0.0
    assert part("", "Alice is a knight, Bob is a knave", ans) == 0.0  # no box
    assert get_reward("exact")("", " 42 ", "42") == 1.0


def test_user_rewards_and_errors(tmp_path, monkeypatch):
    (tmp_path / "myrewards.py").write_text(
        "def good(p, c, a):\n    return 0.5\n"
        "def nan(p, c, a):\n    return float('nan')\n"
        "def boom(p, c, a):\n    raise ValueError('bad')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_reward("myrewards:good")("", "", "") == 0.5
    with pytest.raises(SampleEffectError, match="returned nan"):
        get_reward("myrewards:nan")("", "", "")
    with pytest.raises(SampleEffectError, match="raised ValueError: bad"):
        get_reward("myrewards:boom")("", "", "")
    with pytest.raises(SampleEffectError, match="unknown reward"):
        get_reward("nope")
    with pytest.raises(SampleEffectError, match="cannot import"):
        get_reward("no_such_module_xyz:f")
    with pytest.raises(SampleEffectError, match="has no function"):
        get_reward("myrewards:missing")
