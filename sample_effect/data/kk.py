"""Knights and Knaves: logic puzzles with exactly one solution, after Xie et al. 2024.

Each of n people makes one statement: a leaf ("X is a knight" / "X is a knave", never a knave
claim about oneself), its negation, or and / or / if-then / if-and-only-if over two distinct
leaves. Knights always tell the truth, knaves always lie, so an assignment is a solution when
every person's role equals the truth of their statement. Puzzles are drawn with a seeded
generator, solved by brute force over all 2^n assignments, and kept only if the solution is
unique and the puzzle is new.

Statements are nested lists with 0-based person indices, e.g. ["and", ["knight", 1], ["knave", 2]];
ops: knight, knave, not, and, or, implies, iff.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.io import atomic_open

NAMES = [
    "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Isabel", "Jack", "Kate", "Liam",
    "Mia", "Noah", "Olivia", "Peter", "Quinn", "Rose", "Sam", "Tina", "Uma", "Victor", "Wendy", "Xavier",
    "Yara", "Zach", "Amelia", "Ben", "Chloe", "Daniel", "Ella", "Felix", "Hannah", "Isaac", "Jade", "Leo",
    "Lily", "Mason", "Nora", "Oscar", "Penny", "Ruby", "Sofia", "Theo", "Victoria", "Will", "Zoe", "Aaron",
    "Ethan", "Lucas", "Sophia",
]

STYLES = ("answer-only", "short-cot", "long-cot")
OPS = ("knight", "knave", "not", "and", "or", "implies", "iff")

OPENING = (
    "A very special island is inhabited only by knights and knaves. Knights always tell the truth, "
    "and knaves always lie. You meet {n} inhabitants: {names}."
)
SPEECH = [
    '{name} said, "{content}."',
    '"{content}," {name} declared.',
    '{name} told you that {content}.',
    '{name} claimed, "{content}."',
    'In {name}\'s words: "{content}."',
    '{name} stated, "{content}."',
    '"{content}," {name} mentioned.',
    '{name} remarked, "{content}."',
    '{name} asserted: "{content}."',
    'According to {name}, "{content}."',
]
CLOSING = "So who is a knight and who is a knave?"
FORMAT_HINT = "Your final answer should be in this format: \\boxed{XX is a knave, YY is a knight, ...}"

Statement = list  # nested lists, see module docstring


# --------------------------------------------------------------------------------------------
# Logic
# --------------------------------------------------------------------------------------------


def evaluate(stmt: Statement, assignment: Sequence[bool]) -> bool:
    """Truth of a statement under an assignment (True = knight)."""
    op = stmt[0]
    if op == "knight":
        return bool(assignment[stmt[1]])
    if op == "knave":
        return not assignment[stmt[1]]
    if op == "not":
        return not evaluate(stmt[1], assignment)
    a, b = evaluate(stmt[1], assignment), evaluate(stmt[2], assignment)
    if op == "and":
        return a and b
    if op == "or":
        return a or b
    if op == "implies":
        return (not a) or b
    if op == "iff":
        return a == b
    raise ValueError(f"unknown op {op!r}")


def people_in(stmt: Statement) -> set[int]:
    """Indices of the people a statement mentions."""
    if stmt[0] in ("knight", "knave"):
        return {stmt[1]}
    return set().union(*(people_in(s) for s in stmt[1:]))


def solutions(statements: Sequence[Statement]) -> list[tuple[bool, ...]]:
    """All assignments where every person's role equals the truth of their statement."""
    n = len(statements)
    return [
        a for a in itertools.product((True, False), repeat=n)
        if all(a[i] == evaluate(s, a) for i, s in enumerate(statements))
    ]


def _leaf(rng: random.Random, n: int, speaker: int) -> Statement:
    while True:
        op, j = rng.choice(("knight", "knave")), rng.randrange(n)
        if not (op == "knave" and j == speaker):  # "I am a knave" is a paradox, never used
            return [op, j]


def _statement(rng: random.Random, n: int, speaker: int) -> Statement:
    roll = rng.randrange(6)
    if roll == 0:
        return _leaf(rng, n, speaker)
    if roll == 1:
        return ["not", _leaf(rng, n, speaker)]
    a = _leaf(rng, n, speaker)
    b = _leaf(rng, n, speaker)
    while b == a:
        b = _leaf(rng, n, speaker)
    return [("and", "or", "implies", "iff")[roll - 2], a, b]


@dataclass
class Puzzle:
    """One puzzle: names, statements, the unique solution (True = knight) and its index."""

    index: int
    names: list[str]
    statements: list[Statement]
    solution: list[bool]

    @property
    def n(self) -> int:
        """Number of people in the puzzle."""
        return len(self.names)

    @property
    def answer(self) -> str:
        """The text inside the box: "A is a knight, B is a knave, ..." in order of introduction."""
        return ", ".join(f"{nm} is a {role(v)}" for nm, v in zip(self.names, self.solution))


def role(value: bool) -> str:
    """"knight" for True (always tells the truth), "knave" for False (always lies)."""
    return "knight" if value else "knave"


def generate_puzzles(n_people: int, count: int, seed: int = 1234, max_tries: int = 100_000) -> list[Puzzle]:
    """`count` distinct puzzles with `n_people` people, each with exactly one solution; reproducible by seed."""
    if not 2 <= n_people <= 8:
        raise ConfigError("generate_puzzles", f"<n_people> must be between 2 and 8, got {n_people}")
    if count < 1:
        raise ConfigError("generate_puzzles", f"<count> must be >= 1, got {count}")
    rng = random.Random(seed * 1009 + n_people)
    seen: set[str] = set()
    out: list[Puzzle] = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > max_tries:
            raise SampleEffectError(
                f"found only {len(out)} distinct {n_people}-person puzzles in {max_tries} tries; ask for fewer"
            )
        stmts = [_statement(rng, n_people, i) for i in range(n_people)]
        key = json.dumps(stmts)
        if key in seen:
            continue
        sols = solutions(stmts)
        if len(sols) != 1:
            continue
        seen.add(key)
        names = rng.sample(NAMES, n_people)
        out.append(Puzzle(index=len(out), names=names, statements=stmts, solution=list(sols[0])))
    return out


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def say(stmt: Statement, names: Sequence[str]) -> str:
    """A statement as words: "Bob is a knave and Carol is a knight"."""
    op = stmt[0]
    if op in ("knight", "knave"):
        return f"{names[stmt[1]]} is a {op}"
    if op == "not":
        inner = stmt[1]
        return f"{names[inner[1]]} is not a {inner[0]}"
    a, b = say(stmt[1], names), say(stmt[2], names)
    return {"and": f"{a} and {b}", "or": f"{a} or {b}", "implies": f"if {a} then {b}", "iff": f"{a} if and only if {b}"}[op]


def _join_names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f", and {names[-1]}"


def quiz_text(p: Puzzle, seed: int = 1234) -> str:
    """The puzzle as prose: opening, one sentence per person (varied templates), the question."""
    rng = random.Random(seed * 7919 + p.index * 31 + p.n)
    lines = [OPENING.format(n=p.n, names=_join_names(p.names))]
    for i, s in enumerate(p.statements):
        content = say(s, p.names)
        tpl = rng.choice(SPEECH)
        if '"{content}' in tpl:
            content = content[0].upper() + content[1:]
        lines.append(tpl.format(name=p.names[i], content=content))
    lines.append(CLOSING)
    return " ".join(lines)


def prompt_text(p: Puzzle, seed: int = 1234) -> str:
    """The prompt a model sees: the quiz plus the answer-format instruction."""
    return f"{quiz_text(p, seed)} {FORMAT_HINT}\n"


def _final(p: Puzzle) -> str:
    return f"The final answer is: \\boxed{{{p.answer}}}."


def _why(p: Puzzle, i: int, assignment: Sequence[bool]) -> str:
    truth = evaluate(p.statements[i], assignment)
    claim = say(p.statements[i], p.names)
    return f"{p.names[i]}'s claim that {claim} is {'true' if truth else 'false'}"


def short_cot(p: Puzzle) -> str:
    """Direct deductions: each person's role with the reason it is consistent, then the box."""
    sol = p.solution
    steps = [f"{p.names[i]} is a {role(sol[i])}, since {_why(p, i, sol)}." for i in range(p.n)]
    return "Let's check each person against the solution. " + " ".join(steps) + "\n" + _final(p)


def long_cot(p: Puzzle) -> str:
    """A depth-first search narrative: assume, find a contradiction, go back, reconsider, verify, answer."""
    out = ["Let's think step by step, assuming a role for each person in turn and checking for contradictions."]
    assignment: list[bool | None] = [None] * p.n

    def contradiction() -> int | None:
        known = [i for i in range(p.n) if assignment[i] is not None]
        for i in known:
            if people_in(p.statements[i]) <= set(known):
                full = [bool(v) for v in assignment]
                if evaluate(p.statements[i], full) != assignment[i]:
                    return i
        return None

    def dfs(k: int) -> bool:
        if k == p.n:
            return True
        for value in (True, False):
            assignment[k] = value
            out.append(f"Assume {p.names[k]} is a {role(value)}.")
            bad = contradiction()
            if bad is not None:
                full = [bool(v) for v in assignment]
                claim = say(p.statements[bad], p.names)
                truth = "true" if evaluate(p.statements[bad], full) else "false"
                out.append(
                    f"Wait, then {p.names[bad]}'s claim that {claim} would be {truth}, "
                    f"but {p.names[bad]} is assumed to be a {role(bool(assignment[bad]))}. Contradiction."
                )
                continue
            out.append("No contradiction so far.")
            if dfs(k + 1):
                return True
        assignment[k] = None
        if k > 0:
            out.append(
                f"Both roles for {p.names[k]} fail, so let us go back and reconsider {p.names[k - 1]}."
            )
        return False

    if not dfs(0):  # pragma: no cover - puzzles are generated with a unique solution
        raise RuntimeError("search found no solution")
    checks = [f"{p.names[i]} is a {role(p.solution[i])} and {_why(p, i, p.solution)}" for i in range(p.n)]
    out.append("Let me verify: " + "; ".join(checks) + ". Everything is consistent.")
    return " ".join(out) + "\n" + _final(p)


def response_text(p: Puzzle, style: str) -> str:
    """The response of a given style, always correct."""
    if style == "answer-only":
        return _final(p)
    if style == "short-cot":
        return short_cot(p)
    if style == "long-cot":
        return long_cot(p)
    raise SampleEffectError(f"unknown style '{style}'; choose one of {', '.join(STYLES)}")


def puzzle_record(p: Puzzle, style: str, seed: int = 1234, id_prefix: str = "kk") -> dict[str, Any]:
    """One JSONL line: SFT fields (id, prompt, response) plus the structured puzzle."""
    return {
        "id": f"{id_prefix}-{p.n}p-{p.index}",
        "prompt": prompt_text(p, seed),
        "response": response_text(p, style),
        "answer": p.answer,
        "names": p.names,
        "statements": p.statements,
        "solution": p.solution,
        "style": style,
    }


def write_kk(
    path: str | os.PathLike, people: int, n: int, seed: int = 1234, style: str = "short-cot", id_prefix: str = "kk"
) -> list[dict[str, Any]]:
    """Generate puzzles and write them as JSONL (atomically); returns the records."""
    if style not in STYLES:
        raise SampleEffectError(f"unknown style '{style}'; choose one of {', '.join(STYLES)}")
    records = [puzzle_record(p, style, seed, id_prefix) for p in generate_puzzles(people, n, seed)]
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return records
