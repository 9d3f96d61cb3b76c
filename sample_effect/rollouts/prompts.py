"""RL prompts: the id, text and answer a policy is sampled on and its completions are rewarded against."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sample_effect.data.examples import read_jsonl
from sample_effect.errors import ConfigError, SampleEffectError, literal

__all__ = ["RLPrompt", "chat_template_prompts", "load_rl_prompts"]

log = logging.getLogger("sample_effect")


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



def chat_template_prompts(prompts: Sequence[RLPrompt], tokenizer: Any, template: str = "none") -> list[RLPrompt]:
    """The prompts as the policy is sampled on them: `template` 'none' keeps the raw text; 'auto' wraps each
    as one user turn of the tokenizer's chat template (ending with the assistant's header) when it has one,
    and keeps the raw text otherwise; anything else is the path of a Jinja chat template file used instead."""
    if template == "none":
        return list(prompts)
    if template == "auto":
        if getattr(tokenizer, "chat_template", None) is None:
            log.warning("chat template 'auto': the tokenizer has no chat template, so the prompts stay raw text")
            return list(prompts)
        jinja = None
    else:
        path = Path(template)
        if not path.is_file():
            raise ConfigError("chat_template_prompts", f"<template> must be auto, none or a Jinja template file; "
                              f"{literal(template)} is not a file")
        jinja = path.read_text(encoding="utf-8")
    out = []
    for p in prompts:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}], chat_template=jinja,
                                                 tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja2 syntax / undefined errors, or a tokenizer without apply_chat_template
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError("chat_template_prompts", f"<template> {literal(template)}: could not render prompt "
                              f"'{literal(p.id)}' ({literal(first)})") from None
        out.append(RLPrompt(p.id, text, p.answer))
    return out
