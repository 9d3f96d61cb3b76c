"""Reasoning-style markers ("wait", "hmm", "therefore", ...): how often completions use them, and
what happens when generation is forbidden to emit them.

- `marker_table`: frequency per 1k tokens of each marker set (and each marker) in JSONL files of
  completions (field `response` or `completion`), tokens = whitespace tokens or a tokenizer's;
  matches are case-insensitive on word boundaries ("let me" matches any whitespace between).
- `banned_token_ids` / `TokenBan`: a logits processor for `generation.sample` that sets banned
  ids' logits to -inf. Each marker word is tokenised as "w", " w", "W" and " W"; a variant that
  is one token is banned outright; a multi-token variant has its last token banned whenever the
  tokens before it were just generated (the `bad_words_ids` rule), so sub-word pieces stay allowed.
- `has_markers`: which examples' responses use any marker (for the effects with vs without).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from sample_effect.data.examples import read_jsonl
from sample_effect.errors import ConfigError, SampleEffectError, literal

DEFAULT_MARKERS: dict[str, list[str]] = {
    "anthropomorphic": ["wait", "perhaps", "hmm", "let me"],
    "logical": ["but", "alternatively", "however", "so", "therefore"],
}

TEXT_FIELDS = ("response", "completion")


def marker_regex(word: str) -> re.Pattern[str]:
    """Case-insensitive whole-word pattern; spaces inside a marker match any whitespace."""
    parts = [re.escape(p) for p in word.split()]
    if not parts:
        raise SampleEffectError("empty marker word")
    return re.compile(r"\b" + r"\s+".join(parts) + r"\b", re.IGNORECASE)


def count_marker(text: str, word: str) -> int:
    """How often `word` occurs in `text` as a whole word (see `marker_regex`)."""
    return len(marker_regex(word).findall(text))


def parse_marker_sets(specs: Sequence[str] | None) -> dict[str, list[str]]:
    """`NAME=w1,w2,...` specs (replacing the defaults), or the defaults when none are given."""
    if not specs:
        return {k: list(v) for k, v in DEFAULT_MARKERS.items()}
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, words = spec.partition("=")
        ws = [w.strip() for w in words.split(",") if w.strip()]
        if not sep or not name.strip() or not ws:
            raise ConfigError("parse_marker_sets", f"<specs> expects NAME=word1,word2,..., got '{literal(spec)}'")
        out[name.strip()] = ws
    return out


def load_completions(path: str) -> list[str]:
    """The `response` (or `completion`) field of every line of a JSONL file."""
    texts = []
    for lineno, obj in read_jsonl(path):
        key = next((k for k in TEXT_FIELDS if k in obj), None)
        if key is None:
            raise SampleEffectError(f"{path}:{lineno}: no 'response' or 'completion' field")
        if not isinstance(obj[key], str):
            raise SampleEffectError(f"{path}:{lineno}: field '{key}' must be a string")
        texts.append(obj[key])
    if not texts:
        raise SampleEffectError(f"{path}: no completions")
    return texts


def n_tokens(text: str, tokenizer: Any = None) -> int:
    """Length of `text` in `tokenizer`'s tokens (no special tokens); in words when there is none."""
    if tokenizer is None:
        return len(text.split())
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def marker_table(files: Mapping[str, Sequence[str]], sets: Mapping[str, Sequence[str]], tokenizer: Any = None) -> pd.DataFrame:
    """Rows (file, set, marker, count, tokens, per_1k, completions_with); marker '*' is the whole set."""
    rows = []
    for fname, texts in files.items():
        tokens = sum(n_tokens(t, tokenizer) for t in texts)
        for set_name, words in sets.items():
            per_text = [[count_marker(t, w) for w in words] for t in texts]
            for j, w in enumerate(words):
                c = sum(r[j] for r in per_text)
                rows.append({"file": fname, "set": set_name, "marker": w, "count": c, "tokens": tokens,
                             "per_1k": 1000.0 * c / tokens if tokens else float("nan"),
                             "completions_with": sum(1 for r in per_text if r[j]), "completions": len(texts)})
            c = sum(sum(r) for r in per_text)
            rows.append({"file": fname, "set": set_name, "marker": "*", "count": c, "tokens": tokens,
                         "per_1k": 1000.0 * c / tokens if tokens else float("nan"),
                         "completions_with": sum(1 for r in per_text if sum(r)), "completions": len(texts)})
    return pd.DataFrame(rows)


def has_markers(text: str, words: Iterable[str]) -> bool:
    """True when `text` uses any of `words` (see `count_marker`)."""
    return any(count_marker(text, w) for w in words)


# --------------------------------------------------------------------------------------------
# Token banning
# --------------------------------------------------------------------------------------------


def word_variants(word: str) -> list[str]:
    """The spellings a tokenizer sees for a marker: as is and capitalised, each with and without a leading space."""
    cap = word[:1].upper() + word[1:]
    return list(dict.fromkeys([word, " " + word, cap, " " + cap]))


@dataclass
class TokenBan:
    """Logits processor: `single` ids are always banned; for each sequence in `sequences` its last
    token is banned when the tokens before it end the current context."""

    single: set[int] = field(default_factory=set)
    sequences: list[tuple[int, ...]] = field(default_factory=list)

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        if self.single:
            logits[:, sorted(self.single)] = float("-inf")
        for seq in self.sequences:
            k = len(seq) - 1
            if ids.shape[1] < k:
                continue
            prefix = torch.tensor(seq[:-1], device=ids.device)
            hit = (ids[:, ids.shape[1] - k :] == prefix).all(-1)
            logits[hit, seq[-1]] = float("-inf")
        return logits

    @property
    def n(self) -> int:
        """Number of banned entries: single token ids plus multi-token sequences."""
        return len(self.single) + len(self.sequences)


def banned_token_ids(tokenizer: Any, words: Iterable[str]) -> TokenBan:
    """The ban for these marker words under this tokenizer (see the module docstring)."""
    ban = TokenBan()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for w in words:
        for v in word_variants(w):
            ids = [i for i in tokenizer(v, add_special_tokens=False)["input_ids"] if i not in special]
            if len(ids) == 1:
                ban.single.add(int(ids[0]))
            elif len(ids) > 1 and tuple(ids) not in ban.sequences:
                ban.sequences.append(tuple(int(i) for i in ids))
    return ban


def ban_accuracy(model: torch.nn.Module, tokenizer: Any, items: Sequence[tuple[str, str]], reward: Any,
                 ban: TokenBan | None, max_new_tokens: int) -> tuple[float, list[str]]:
    """Mean reward of greedy completions with (or without, ban=None) the ban, and the completions."""
    from sample_effect.rollouts.generation import sample

    comps = [sample(model, tokenizer, p, 1, max_new_tokens, 0.0, logits_processor=ban)[0] for p, _ in items]
    scores = [reward(p, c.text, a, finished=c.finished) for (p, a), c in zip(items, comps)]
    return (sum(scores) / len(scores) if scores else float("nan")), [c.text for c in comps]
