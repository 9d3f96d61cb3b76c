"""What the engine will do for a model, data and update, and how much memory it expects: `rank --explain`.

The plan is read off the same functions the engine runs (coverage rules, chunk planner, per-layer
norm choice and block sizes), evaluated on shape-only ("meta") tensors, so it never disagrees
with what a run does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import (
    ComputeConfig,
    activation_bytes_per_sequence,
    bytes_per_sequence,
    ghost_coverage,
    plan_chunk,
)
from sample_effect.kernels.ghost import Factor, norm_method
from sample_effect.kernels.layers import rule_for_kind
from sample_effect.models.loading import accumulation_dtype
from sample_effect.update.optim import UpdateConfig


@dataclass
class LayerPlan:
    """One chosen parameter: how its per-example gradients are handled."""

    name: str
    shape: tuple[int, ...]
    uses: list[str]  # factor kinds, one per module use; ["vmap"] when not covered
    norm: str  # "gram", "materialise", "-" (not needed) or "vmap"
    block_rows: int  # examples whose gradients of this layer are formed at once (Adam / materialised norms)


@dataclass
class Plan:
    """The whole plan: path, chunk size and the expected peak memory in bytes."""

    method: str
    chunk: int
    max_len: int
    layers: list[LayerPlan]
    peak_bytes: int

    def render(self) -> str:
        """A readable multi-line description (what `--explain` prints)."""
        lines = [
            f"method: {self.method}; chunk: {self.chunk} sequence(s) of up to {self.max_len} tokens; "
            f"expected peak memory: {self.peak_bytes / 2**20:.1f} MiB",
        ]
        if self.layers:
            width = max(len(lp.name) for lp in self.layers)
            lines.append(f"{'parameter':<{width}}  {'shape':<16} {'uses':<14} {'norm':<12} block")
            for lp in self.layers:
                lines.append(
                    f"{lp.name:<{width}}  {'x'.join(map(str, lp.shape)):<16} {'+'.join(lp.uses):<14} {lp.norm:<12} {lp.block_rows}"
                )
        return "\n".join(lines)


def _meta_factor(module: torch.nn.Module, pname: str, kind: str, rows: int, slots: int) -> Factor:
    """A shape-only factor of one use, made by the layer rule of its kind."""
    return rule_for_kind(kind).meta_factor(module, pname, rows, slots)


def make_plan(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    update: UpdateConfig,
    compute: ComputeConfig,
) -> Plan:
    """The engine's plan for scoring `examples` with `update` under `compute` (no computation)."""
    from sample_effect.engine.effects import block_rows

    max_len = max(int(s.shape[0]) for ex in examples for s in ex.sequences)
    max_resp = max(ex.n_responses for ex in examples)
    first = next(iter(params.values()))
    acc = accumulation_dtype(first.dtype)
    acc_size = torch.empty((), dtype=acc).element_size()
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = compute.budget_bytes()
    method = "ghost" if compute.method == "auto" else compute.method
    if method == "vmap":
        chunk = plan_chunk(model, params, max_len, compute)
        peak = model_bytes + chunk * bytes_per_sequence(model, params, max_len)
        layers = [LayerPlan(n, tuple(p.shape), ["vmap"], "vmap", chunk) for n, p in params.items()]
        return Plan(method, chunk, max_len, layers, peak)
    chunk = plan_chunk(model, params, max_len, compute, activation_bytes_per_sequence)
    if method == "jvp":
        return Plan(method, chunk, max_len, [], model_bytes + chunk * activation_bytes_per_sequence(model, params, max_len))
    modules = dict(model.named_modules())
    coverage, uncovered, _ = ghost_coverage(model, params)
    rows = max(1, min(chunk, sum(ex.n_responses for ex in examples)))  # examples per chunk
    slots = max_len * max_resp
    need_norm = update.clip is not None or compute.grad_norms or update.optimizer != "sgd"
    layers: list[LayerPlan] = []
    block_peak = 0
    for name, p in params.items():
        if name in uncovered:
            layers.append(LayerPlan(name, tuple(p.shape), ["vmap"], "vmap", rows))
            block_peak = max(block_peak, rows * p.numel() * acc_size * 2)
            continue
        fs = [_meta_factor(modules[m], pn, k, rows, slots) for m, pn, k in coverage[name]]
        norm = "-"
        if need_norm:
            norm = norm_method(fs) if compute.norm_method == "auto" else compute.norm_method
        copies = 2 if update.optimizer != "sgd" else 1
        block = block_rows(Factor(fs[0].kind, None, torch.empty(rows, 1, device="meta", dtype=acc), p.shape), copies, budget)
        if update.optimizer != "sgd" or norm == "materialise":
            block_peak = max(block_peak, block * p.numel() * acc_size * copies)
        if norm == "gram":
            block_peak = max(block_peak, rows * slots * slots * acc_size * 2)
        layers.append(LayerPlan(name, tuple(p.shape), [k for _, _, k in coverage[name]], norm, block))
    if uncovered:
        block_peak += rows * bytes_per_sequence(model, {n: params[n] for n in uncovered}, max_len)
    peak = model_bytes + chunk * activation_bytes_per_sequence(model, params, max_len) + block_peak
    return Plan(method, chunk, max_len, layers, int(peak))
