"""Sampling from a causal LM: greedy or temperature sampling with a KV cache, one prompt at a time.

Written out rather than delegated to `model.generate` so that the policy is exactly softmax(logits /
temperature) with no hidden top-k / top-p defaults, and so each completion knows whether it
finished (emitted EOS) or was cut at the length limit, which the K&K reward needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sample_effect.models.loading import position_limit


@dataclass
class Completion:
    """One sampled completion: its text, token ids (EOS included if emitted) and whether it finished."""

    text: str
    token_ids: list[int]
    finished: bool


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt tokens exactly as the data path builds them (the tokenizer's usual special tokens)."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    n: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    logits_processor: Any = None,
) -> list[Completion]:
    """`n` completions of one prompt; temperature 0 is greedy decoding.

    `logits_processor(ids, logits) -> logits`, if given, rewrites each step's next-token logits
    ([n, V]) given the tokens so far (prompt + generated, [n, t]) before the choice, e.g. to ban tokens.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, prompt)] * n, device=device)
    limit = position_limit(model)
    if limit:
        max_new_tokens = max(0, min(max_new_tokens, limit - ids.shape[1]))
    was_training = model.training
    model.eval()
    kw = _cache_keyword(model)
    out = model(input_ids=ids, use_cache=True)
    past, logits = _cache_of(out), out.logits[:, -1]
    tokens = torch.zeros(n, 0, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        if logits_processor is not None:
            logits = logits_processor(torch.cat([ids, tokens], dim=1), logits)
        if temperature and temperature > 0:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            if generator is not None and generator.device != probs.device:  # a CPU generator drives a GPU model
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(device)
            else:
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            nxt = logits.argmax(-1)
        if eos is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if eos is not None:
            done |= nxt == eos
            if bool(done.all()):
                break
        out = model(input_ids=nxt[:, None], use_cache=True, **{kw: past})
        past, logits = _cache_of(out), out.logits[:, -1]
    model.train(was_training)
    result = []
    for row in tokens.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
            finished = True
        else:
            finished = False
        text_ids = row[:-1] if finished else row
        result.append(Completion(tokenizer.decode(text_ids, skip_special_tokens=True), row, finished))
    return result


def _cache_keyword(model: torch.nn.Module) -> str:
    """The forward keyword of the KV cache: `cache` (transformers >= 5.2x) or the older `past_key_values`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps forward(**kwargs)
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out: Any) -> Any:
    """The KV cache of a forward output, under either name."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def greedy_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[tuple[str, str]],
    reward: Any,
    max_new_tokens: int = 256,
) -> tuple[float, list[Completion]]:
    """Mean reward of greedy completions over (prompt, answer) pairs, and the completions."""
    comps = [sample(model, tokenizer, p, 1, max_new_tokens, 0.0)[0] for p, _ in items]
    scores = [reward(p, c.text, a, finished=c.finished) for (p, a), c in zip(items, comps)]
    return (sum(scores) / len(scores) if scores else float("nan")), comps
