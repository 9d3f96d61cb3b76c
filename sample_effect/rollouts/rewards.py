"""Reward functions f(prompt, completion, answer, finished=True) -> float.

`finished` is False when generation was cut at the length limit; the trainers pass it. Built-ins:
- `kk`: 1.0 only if the completion finished and the last \\boxed{...}, split on ", " and sorted,
  equals the sorted parts of the answer (the paper's K&K reward: no partial or format credit);
- `kk-partial`: the fraction of the answer's parts (one per person) found in the last box of a
  finished completion, 0 if the box holds more parts than the answer (no credit for listing both
  roles). A shaped reward for models too weak to solve whole puzzles: GRPO needs reward variance;
- `boxed`: 1.0 if the last \\boxed{...} content equals the answer string (stripped);
- `exact`: 1.0 if the stripped completion equals the stripped answer.
A user reward is `module:function`; a function without a `finished` parameter is called without it.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable

from sample_effect.errors import ConfigError, SampleEffectError, literal

Reward = Callable[..., float]

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (no nested braces), or None."""
    found = _BOXED.findall(text)
    return found[-1] if found else None


def _boxed_parts(completion: str, finished: bool) -> list[str] | None:
    """The last box's comma-separated parts, stripped, of a finished completion (None: unfinished or no box)."""
    box = last_boxed(completion) if finished else None
    return None if box is None else [part.strip() for part in box.split(", ")]


def kk_reward(prompt: str, completion: str, answer: str, finished: bool = True) -> float:
    """The Knights-and-Knaves reward: finished, and the last box has exactly the answer's parts in any order."""
    got = _boxed_parts(completion, finished)
    want = sorted(part.strip() for part in answer.split(", "))
    return 1.0 if got is not None and sorted(got) == want else 0.0


def kk_partial_reward(prompt: str, completion: str, answer: str, finished: bool = True) -> float:
    """Partial K&K credit: share of the answer's parts in the last box (0 when unfinished, unboxed or over-long)."""
    parts = _boxed_parts(completion, finished)
    if parts is None:
        return 0.0
    got = {part for part in parts if part}
    want = [part.strip() for part in answer.split(", ")]
    if not want or len(got) > len(want):
        return 0.0
    return sum(w in got for w in want) / len(want)


def boxed_reward(prompt: str, completion: str, answer: str, finished: bool = True) -> float:
    """1.0 if the last box's content equals the answer string."""
    box = last_boxed(completion)
    return 1.0 if finished and box is not None and box.strip() == answer.strip() else 0.0


def exact_reward(prompt: str, completion: str, answer: str, finished: bool = True) -> float:
    """1.0 if the whole completion equals the answer (both stripped)."""
    return 1.0 if finished and completion.strip() == answer.strip() else 0.0


BUILTIN: dict[str, Reward] = {"kk": kk_reward, "kk-partial": kk_partial_reward, "boxed": boxed_reward, "exact": exact_reward}


def checked_reward(fn: Callable[..., object], name: str) -> Reward:
    """Wrap a reward function so it always takes `finished` and returns a finite float (else a clear error)."""
    try:
        params = inspect.signature(fn).parameters
        takes_finished = "finished" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_finished = False

    def reward(prompt: str, completion: str, answer: str, finished: bool = True) -> float:
        try:
            value = fn(prompt, completion, answer, finished=finished) if takes_finished else fn(prompt, completion, answer)
        except Exception as exc:
            raise SampleEffectError(f"reward '{name}' raised {type(exc).__name__}: {exc}") from exc
        try:
            value = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SampleEffectError(f"reward '{name}' returned {value!r}, not a number") from None
        if not math.isfinite(value):
            raise SampleEffectError(f"reward '{name}' returned {value} for a completion")
        return value

    reward.__name__ = f"reward_{name}"
    return reward


def get_reward(name: str) -> Reward:
    """A built-in reward by name (kk, exact, boxed) or `module:function`, wrapped to check its output."""
    if name in BUILTIN:
        return checked_reward(BUILTIN[name], name)
    if ":" not in name:
        raise ConfigError("get_reward", f"unknown reward '{literal(name)}' for <name>; use one of {', '.join(BUILTIN)} or module:function")
    module_name, _, func_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            "get_reward", f"cannot import reward module '{literal(module_name)}' (<name> {literal(name)}): {type(exc).__name__}: {literal(exc)}"
        ) from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError("get_reward", f"<name> '{literal(name)}': module '{literal(module_name)}' has no function '{literal(func_name)}'")
    return checked_reward(fn, name)
