"""Imitation sources: where fine-tuning data comes from, and how much each source helps.

- `run_rft`: rejection-sampling fine-tuning (STaR / RAFT / ReST): each round samples N completions
  per prompt from the current policy, keeps those the reward accepts (reward >= threshold) and runs
  SFT on them; per round it logs the training reward, held-out greedy accuracy, the policy's token
  entropy along its own samples (from logits) and the number kept, and reports when entropy collapses.
  `drop_uniform` discards prompts whose samples all got the same reward (arXiv 2504.11343).
- `teacher_completions` + SFT: off-policy distillation from a teacher's samples, optionally filtered
  by the reward (`filter_reward=None` keeps all, as in arXiv 2505.21067).
- `onpolicy_distill`: on-policy distillation (GKD, arXiv 2306.13649): the student samples, the teacher
  scores every token, and the loss is the per-token reverse KL(student || teacher) averaged over the
  completion tokens (`reverse_kl_loss`), minimised with AdamW.
- `compare_sources`: mean sample effect per data source with a bootstrap 95% CI, optionally the
  actual target-loss gain after K SFT steps from the same start.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sample_effect.data.examples import (
    TokenizedExample,
    examples_from_records,
    pad_sequences,
    tokenize_examples,
)
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.io import atomic_open
from sample_effect.rollouts.generation import Completion, greedy_accuracy, prompt_ids, sample
from sample_effect.rollouts.prompts import RLPrompt, chat_template_prompts
from sample_effect.training.common import MetricsWriter
from sample_effect.training.sft import SFTConfig, train_sft

Reward = Callable[..., float]


# --------------------------------------------------------------------------------------------
# Entropy and shared tokenizers
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def completion_entropies(model: torch.nn.Module, tokenizer: Any, prompt: str, completion_ids: Sequence[int]) -> torch.Tensor:
    """Entropy (nats) of the model's next-token distribution (temperature 1) at each completion position.

    Position t is the distribution the completion's token t was drawn from: softmax of the logits
    after prompt + completion[:t]. Returns a float64 tensor of len(completion_ids).
    """
    p = prompt_ids(tokenizer, prompt)
    c = list(completion_ids)
    if not c:
        return torch.zeros(0, dtype=torch.float64)
    device = next(model.parameters()).device
    ids = torch.tensor([p + c], device=device)
    logits = model(input_ids=ids, use_cache=False).logits[0, len(p) - 1 : len(p) - 1 + len(c)]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(-1).cpu()


def policy_entropy(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], n: int, max_new_tokens: int, generator: torch.Generator
) -> tuple[float, list[tuple[str, Completion]]]:
    """Mean token entropy of the policy along `n` of its own samples (temperature 1) per prompt.

    The mean is over all sampled tokens (EOS included) of all samples; returns it and the samples.
    """
    samples: list[tuple[str, Completion]] = []
    total, count = 0.0, 0
    for pr in prompts:
        for c in sample(model, tokenizer, pr, n, max_new_tokens, 1.0, generator):
            ent = completion_entropies(model, tokenizer, pr, c.token_ids)
            total += float(ent.sum())
            count += int(ent.numel())
            samples.append((pr, c))
    return (total / count if count else float("nan")), samples


def check_same_tokenizer(student_tok: Any, teacher_tok: Any, student: str = "student", teacher: str = "teacher") -> None:
    """Student and teacher must share the vocabulary and token->id map (and EOS) to compare logits."""
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv != tv:
        only_s = len(set(sv) - set(tv))
        only_t = len(set(tv) - set(sv))
        moved = sum(1 for k in set(sv) & set(tv) if sv[k] != tv[k])
        raise SampleEffectError(
            f"{student} and {teacher} do not share a tokenizer: vocab sizes {len(sv)} vs {len(tv)}, "
            f"{only_s} token(s) only in the {student}'s, {only_t} only in the {teacher}'s, {moved} with different ids; "
            "distillation compares per-token distributions, so both must use the same tokenizer"
        )
    if getattr(student_tok, "eos_token_id", None) != getattr(teacher_tok, "eos_token_id", None):
        raise SampleEffectError(f"{student} and {teacher} tokenizers have different EOS ids "
                                f"({student_tok.eos_token_id} vs {teacher_tok.eos_token_id})")


def _check_vocab_width(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    vs = student.get_output_embeddings().weight.shape[0]
    vt = teacher.get_output_embeddings().weight.shape[0]
    if vs != vt:
        raise SampleEffectError(f"student and teacher output {vs} vs {vt} logits per token; they must share a vocabulary")


# --------------------------------------------------------------------------------------------
# Rejection-sampling fine-tuning
# --------------------------------------------------------------------------------------------


@dataclass
class RFTConfig:
    """Rejection-sampling fine-tuning settings; `sft` is the per-round SFT schedule (fresh AdamW each round)."""

    rounds: int = 3
    samples_per_prompt: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 64
    threshold: float = 1.0
    drop_uniform: bool = False
    dedupe: bool = True
    collapse_fraction: float = 0.5
    entropy_samples: int = 2
    eval_max_new_tokens: int = 64
    seed: int = 0
    sft: SFTConfig = field(default_factory=SFTConfig)

    def validate(self) -> RFTConfig:
        """Raise SampleEffectError on any out-of-range setting; return self."""
        if self.rounds < 1:
            raise ConfigError("RFTConfig", f"<rounds> must be >= 1, got {self.rounds}")
        for name in ("samples_per_prompt", "max_new_tokens", "entropy_samples", "eval_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError("RFTConfig", f"<{name}> must be >= 1, got {getattr(self, name)}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError("RFTConfig", f"<temperature> must be positive for rejection sampling, got {self.temperature}")
        if not math.isfinite(self.threshold):
            raise ConfigError("RFTConfig", f"<threshold> must be a finite number, got {self.threshold}")
        if not 0 < self.collapse_fraction < 1:
            raise ConfigError("RFTConfig", f"<collapse_fraction> must be in (0, 1), got {self.collapse_fraction}")
        if self.drop_uniform and self.samples_per_prompt < 2:
            raise ConfigError("RFTConfig", "<drop_uniform> needs <samples_per_prompt> >= 2 (one sample is always 'uniform')")
        self.sft.validate()
        return self


@dataclass
class RFTResult:
    """What `run_rft` returns: per-round metrics, the round entropy collapsed in (None if it did not) and the summary (out_dir/summary.json)."""

    metrics: pd.DataFrame
    collapse_round: int | None
    summary: dict[str, Any]


def collapse_round(entropies: Sequence[float], fraction: float = 0.5) -> int | None:
    """First round whose entropy is below `fraction` x round 0's; None if none is."""
    if not entropies or not math.isfinite(entropies[0]):
        return None
    for r, e in enumerate(entropies[1:], start=1):
        if math.isfinite(e) and e < fraction * entropies[0]:
            return r
    return None


def rejection_sample(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[RLPrompt], reward: Reward, cfg: RFTConfig,
    generator: torch.Generator, tag: str = "", progress: bool = False,
) -> tuple[list[dict], dict[str, float]]:
    """Sample, score, filter. Returns the kept SFT records and counts (reward mean, kept, dropped prompts)."""
    kept: list[dict] = []
    rewards: list[float] = []
    dropped = 0
    for p in tqdm(prompts, desc=f"sample {tag}".strip(), unit="prompt", disable=not progress, leave=False):
        comps = sample(model, tokenizer, p.prompt, cfg.samples_per_prompt, cfg.max_new_tokens, cfg.temperature, generator)
        rs = [reward(p.prompt, c.text, p.answer, finished=c.finished) for c in comps]
        rewards += rs
        if cfg.drop_uniform and len(set(rs)) == 1:
            dropped += 1
            continue
        seen: set[str] = set()
        for c, r in zip(comps, rs):
            if r < cfg.threshold or not c.text.strip() or (cfg.dedupe and c.text in seen):
                continue
            seen.add(c.text)
            kept.append({"id": f"{p.id}{tag}-{len(seen) - 1}", "prompt": p.prompt, "response": c.text,
                         "answer": p.answer, "reward": r, "source_id": p.id})
    stats = {"train_reward": float(np.mean(rewards)) if rewards else float("nan"), "n_samples": len(rewards),
             "n_kept": len(kept), "prompts_dropped_uniform": dropped}
    return kept, stats


def write_jsonl(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    """Write `records` as JSON lines (UTF-8, non-ASCII kept), atomically."""
    with atomic_open(path) as f:
        f.writelines(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)


def run_rft(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[RLPrompt],
    eval_prompts: Sequence[RLPrompt],
    reward: Reward,
    config: RFTConfig,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> RFTResult:
    """R rounds of sample -> filter -> SFT, in place. Row r of the metrics describes the policy after r rounds.

    Rows 0..R-1 also give the round's kept data (written to out_dir/round-XX.jsonl) and its SFT;
    row R is the final policy (its samples are drawn for the reward and entropy but not trained on).
    Entropy and accuracy are measured on `eval_prompts`; entropy uses a generator re-seeded each
    round so every round sees the same random stream.
    """
    cfg = config.validate()
    if not prompts:
        raise SampleEffectError("no training prompts")
    if not eval_prompts:
        raise SampleEffectError("no held-out prompts for accuracy and entropy")
    out = Path(out_dir) if out_dir else None
    metrics = MetricsWriter(out / "metrics.csv" if out else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    items = [(p.prompt, p.answer) for p in eval_prompts]
    t0 = time.perf_counter()
    for r in tqdm(range(cfg.rounds + 1), desc="rft", unit="round", disable=not progress):
        model.eval()
        acc, _ = greedy_accuracy(model, tokenizer, items, reward, cfg.eval_max_new_tokens)
        egen = torch.Generator().manual_seed(cfg.seed + 7919)
        ent, _ = policy_entropy(model, tokenizer, [p.prompt for p in eval_prompts], cfg.entropy_samples, cfg.max_new_tokens, egen)
        kept, stats = rejection_sample(model, tokenizer, prompts, reward, cfg, gen, f"-r{r}", progress)
        row: dict[str, Any] = {"round": r, **stats, "eval_accuracy": acc, "entropy": ent, "trained": False, "sft_loss": float("nan")}
        if r < cfg.rounds:
            if out is not None:
                write_jsonl(out / f"round-{r:02d}.jsonl", kept)
            if kept:
                train, _ = tokenize_examples(examples_from_records(list(enumerate(kept, 1)), f"round {r} data"), tokenizer)
                sft_cfg = _with_seed(cfg.sft, cfg.sft.seed + r)
                m = train_sft(model, tokenizer, train, sft_cfg, progress=False)
                row["trained"] = True
                row["sft_loss"] = float(m["train_loss"].dropna().iloc[-1]) if m["train_loss"].notna().any() else float("nan")
        row["elapsed_s"] = time.perf_counter() - t0
        metrics.add(row)
    frame = metrics.frame()
    ents = [float(x) for x in frame["entropy"]]
    col = collapse_round(ents, cfg.collapse_fraction)
    summary = {
        "rounds": cfg.rounds,
        "collapse_round": col,
        "collapse_fraction": cfg.collapse_fraction,
        "train_reward": [float(x) for x in frame["train_reward"]],
        "eval_accuracy": [float(x) for x in frame["eval_accuracy"]],
        "entropy": ents,
        "n_kept": [int(x) for x in frame["n_kept"]],
        "config": {k: v for k, v in asdict(cfg).items()},
    }
    if out is not None:
        with atomic_open(out / "summary.json") as f:
            json.dump(summary, f, indent=2)
    model.eval()
    return RFTResult(frame, col, summary)


def _with_seed(cfg: SFTConfig, seed: int) -> SFTConfig:
    c = copy.copy(cfg)
    c.seed = seed
    return c


# --------------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------------


def teacher_completions(
    teacher: torch.nn.Module, tokenizer: Any, prompts: Sequence[RLPrompt], filter_reward: Reward | None,
    n: int = 1, temperature: float = 1.0, max_new_tokens: int = 64, seed: int = 0, threshold: float = 1.0,
    progress: bool = False,
) -> tuple[list[dict], int]:
    """Teacher samples as SFT records ({id, prompt, response, answer, reward?}) and the number sampled.

    With `filter_reward` only completions scoring >= threshold are kept; without, all are (empty
    completions excepted: they carry no response token).
    """
    gen = torch.Generator().manual_seed(seed)
    recs: list[dict] = []
    total = 0
    for p in tqdm(prompts, desc="teacher", unit="prompt", disable=not progress):
        comps = sample(teacher, tokenizer, p.prompt, n, max_new_tokens, temperature, gen)
        for k, c in enumerate(comps):
            total += 1
            rec = {"id": f"{p.id}-t{k}", "prompt": p.prompt, "response": c.text, "answer": p.answer, "finished": c.finished}
            if filter_reward is not None:
                rec["reward"] = filter_reward(p.prompt, c.text, p.answer, finished=c.finished)
                if rec["reward"] < threshold:
                    continue
            if c.text.strip():
                recs.append(rec)
    return recs, total


def chat_prompts(tokenizer: Any, prompts: Sequence[RLPrompt]) -> list[RLPrompt]:
    """Each prompt as one user turn in the tokenizer's chat template, ending with the assistant's header
    (instruct teachers such as SmolLM2-Instruct answer sensibly only in their chat format)."""
    if not getattr(tokenizer, "chat_template", None):
        raise SampleEffectError("the tokenizer has no chat template to wrap the prompts in")
    return chat_template_prompts(prompts, tokenizer, "auto")


def reverse_kl_tokens(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) = sum_v p_s(v) (log p_s(v) - log p_t(v)) per position ([..., V] -> [...])."""
    ls = torch.log_softmax(student_logits, dim=-1)
    lt = torch.log_softmax(teacher_logits.to(ls.dtype), dim=-1)
    return (ls.exp() * (ls - lt)).sum(-1)


def reverse_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked (completion) positions of the per-token reverse KL; logits [B, L, V], mask [B, L]."""
    kl = reverse_kl_tokens(student_logits, teacher_logits)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1)


def onpolicy_batch(tokenizer: Any, prompts: Sequence[str], completions: Sequence[Sequence[int]], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt + completion ids [B, T] and the mask [B, T] of positions whose logits predict a completion token.

    The engine's `pad_sequences` gives the same mask over the T - 1 next-token targets; the last
    position predicts nothing, so it is padded with False to line up with the logits.
    """
    seqs, starts = [], []
    for p, c in zip(prompts, completions):
        pid = prompt_ids(tokenizer, p)
        seqs.append(torch.tensor(pid + list(c), dtype=torch.long))
        starts.append(len(pid))
    ids, mask = pad_sequences(seqs, starts)
    return ids.to(device), torch.nn.functional.pad(mask, (0, 1)).to(device)


def onpolicy_loss(student: torch.nn.Module, teacher: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse KL(student || teacher) averaged over completion tokens; gradients flow into the student only."""
    s_logits = student(input_ids=ids, use_cache=False).logits
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, use_cache=False).logits
    return reverse_kl_loss(s_logits, t_logits, mask)


@dataclass
class OnPolicyConfig:
    """On-policy distillation settings: steps of `prompts_per_step` prompts x `samples_per_prompt` student samples, one AdamW step each."""

    steps: int = 20
    prompts_per_step: int = 4
    samples_per_prompt: int = 1
    temperature: float = 1.0
    max_new_tokens: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0

    def validate(self) -> OnPolicyConfig:
        """Raise SampleEffectError on any out-of-range setting; return self."""
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError("OnPolicyConfig", f"<lr> must be a positive number, got {self.lr}")
        for name in ("steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError("OnPolicyConfig", f"<{name}> must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ConfigError("OnPolicyConfig", f"<temperature> must be positive for on-policy sampling, got {self.temperature}")
        return self


def onpolicy_distill(
    student: torch.nn.Module, teacher: torch.nn.Module, tokenizer: Any, prompts: Sequence[RLPrompt], config: OnPolicyConfig,
    metrics_path: str | os.PathLike | None = None, progress: bool = True,
) -> pd.DataFrame:
    """GKD with the reverse KL: each step the student samples on a batch of prompts, the teacher scores
    every completion token, and one AdamW step lowers the token-mean KL(student || teacher)."""
    cfg = config.validate()
    if not prompts:
        raise SampleEffectError("no prompts to distil on")
    _check_vocab_width(student, teacher)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    from sample_effect.training.common import adamw_update, make_optimizer

    opt, _ = make_optimizer(student, adamw_update(cfg.lr, cfg.max_grad_norm, cfg.weight_decay))
    gen = torch.Generator().manual_seed(cfg.seed)
    device = next(student.parameters()).device
    metrics = MetricsWriter(metrics_path)
    order: list[int] = []
    t0 = time.perf_counter()
    for step in tqdm(range(1, cfg.steps + 1), desc="on-policy distill", unit="step", disable=not progress):
        if len(order) < cfg.prompts_per_step:
            order += torch.randperm(len(prompts), generator=gen).tolist()
        batch, order = [prompts[i] for i in order[: cfg.prompts_per_step]], order[cfg.prompts_per_step :]
        texts, comps = [], []
        for p in batch:
            for c in sample(student, tokenizer, p.prompt, cfg.samples_per_prompt, cfg.max_new_tokens, cfg.temperature, gen):
                texts.append(p.prompt)
                comps.append(c.token_ids)
        ids, mask = onpolicy_batch(tokenizer, texts, comps, device)
        student.train()
        opt.zero_grad(set_to_none=True)
        loss = onpolicy_loss(student, teacher, ids, mask)
        loss.backward()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([q for q in student.parameters() if q.requires_grad], cfg.max_grad_norm)
        opt.step()
        student.eval()
        metrics.add({"step": step, "reverse_kl": float(loss.detach()), "completion_tokens": int(mask.sum()),
                     "elapsed_s": time.perf_counter() - t0})
    return metrics.frame()


# --------------------------------------------------------------------------------------------
# Comparing data sources
# --------------------------------------------------------------------------------------------


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (NaN for fewer than 2 values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def compare_sources(
    model: torch.nn.Module,
    tokenizer: Any,
    sources: Mapping[str, Sequence[TokenizedExample]],
    target: Sequence[TokenizedExample],
    update: Any,
    compute: Any = None,
    sft: SFTConfig | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, per-example effects): per source its mean sample effect toward the target loss, the
    bootstrap 95% CI and n; with `sft` also the actual target-loss drop after training a copy of the
    model on each source with it (its `max_steps` SFT steps; the same start for every source)."""
    from sample_effect.engine.core import example_loss_values
    from sample_effect.scoring.effects import score_examples_result
    from sample_effect.targets.core import LossTarget

    rows, per = [], []
    base_loss = float(example_loss_values(model, target).mean()) if sft else float("nan")
    for name, exs in sources.items():
        res = score_examples_result(model, tokenizer, exs, LossTarget(target), update, compute=compute)
        eff = np.asarray(res.effect, dtype=np.float64)
        lo, hi = bootstrap_mean_ci(eff, n_boot, seed)
        row: dict[str, Any] = {"source": name, "n": int(eff.size), "effect_mean": float(eff.mean()), "ci_low": lo, "ci_high": hi,
                               "effect_std": float(eff.std(ddof=1)) if eff.size > 1 else float("nan"),
                               "frac_positive": float((eff > 0).mean())}
        if sft:
            m2 = copy.deepcopy(model)
            train_sft(m2, tokenizer, exs, sft, progress=progress)
            after = float(example_loss_values(m2, target).mean())
            row.update({"target_loss_before": base_loss, "target_loss_after": after, "actual_gain": base_loss - after})
            del m2
        rows.append(row)
        per += [{"source": name, "id": i, "effect": float(e)} for i, e in zip(res.ids, eff)]
    return pd.DataFrame(rows), pd.DataFrame(per)
