"""RL prompts: the id, text and answer a policy is sampled on and its completions are rewarded against."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sample_effect.data.examples import read_jsonl
from sample_effect.errors import SampleEffectError

__all__ = ["RLPrompt", "load_rl_prompts"]


@dataclass
class RLPrompt:
    """An RL prompt: id, text and the answer the reward compares against."""

    id: str
    prompt: str
    answer: str


def load_rl_prompts(path: str | os.PathLike) -> list[RLPrompt]:
    """Read `{"id", "prompt", "answer"}` JSONL (extra fields, e.g. a K&K response, are ignored)."""
    out, seen = [], set()
    for lineno, obj in read_jsonl(path):
        for key in ("id", "prompt", "answer"):
            if key not in obj:
                raise SampleEffectError(f"{path}:{lineno}: missing field '{key}'")
            if not isinstance(obj[key], (str, int)) or isinstance(obj[key], bool):
                raise SampleEffectError(f"{path}:{lineno}: field '{key}' must be a string")
        if obj["prompt"] == "":
            raise SampleEffectError(f"{path}:{lineno}: field 'prompt' is empty; sampling needs a prompt to continue")
        if str(obj["id"]) in seen:
            raise SampleEffectError(f"{path}:{lineno}: duplicate prompt id '{obj['id']}'")
        seen.add(str(obj["id"]))
        out.append(RLPrompt(str(obj["id"]), str(obj["prompt"]), str(obj["answer"])))
    return out

