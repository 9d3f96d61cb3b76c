"""The engine's three paths (ghost, vmap, jvp) behind one interface.

A `Backend` is built from a model, its chosen parameters and one `EffectSettings`; `batches`
streams the engine's per-example objects for a list of examples and `run` turns one of them
into a `BatchEffects` (effects, losses and gradient norms of those examples). The planner asks
the same class for its `plan` (`rank --explain`), read off the functions a run calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import numpy as np
import torch

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import (
    ComputeConfig,
    FactorBatch,
    GhostPlan,
    GradientBatch,
    PlanCache,
    activation_bytes_per_sequence,
    bytes_per_sequence,
    free_budget,
    ghost_plans,
    iter_example_directional,
    iter_example_factors,
    iter_example_gradients,
    model_bytes,
    plan_chunk,
)
from sample_effect.engine.vectors import TargetVector
from sample_effect.errors import ConfigError, SampleEffectError
from sample_effect.kernels.ghost import (
    Factor,
    factor_dot,
    materialise_sum,
    norm_method,
    sq_norms_gram,
)
from sample_effect.kernels.layers import rule_for_kind
from sample_effect.models.loading import accumulation_dtype
from sample_effect.objectives.base import SFT, Objective
from sample_effect.update.optim import OptimizerState, UpdateConfig, clip_coefficients
from sample_effect.update.rules import ParamHyper

BLOCK_BYTES = 64 * 2**20  # per-layer gradient blocks: large enough for fast kernels, small enough to reuse memory


def block_rows(f: Factor, copies: int, budget: int | None) -> int:
    """How many examples' gradients of one layer to form at once: `copies` buffers within min(64 MiB, budget / 4)."""
    n = int(f.b.shape[0])
    cap = BLOCK_BYTES if budget is None else min(BLOCK_BYTES, budget // 4)
    per = copies * f.numel() * (torch.float32.itemsize if f.gemm is not None else f.b.element_size())  # narrow: formed in float32
    return max(1, min(n, cap // max(per, 1)))


def sq_norms_and_dots(
    fs: list[Factor], method: str, rows: int, g: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(||g_e||^2, <g_e, g>) of one parameter for every example; the dots only when `g` is given
    and the norms form the gradients (None on the Gram path: take them from the factors then).

    Where the norms form the gradients anyway (the 'materialise' path), the dots are read off
    those same blocks, which saves the factor GEMM of N in out multiply-adds per Linear layer:
    that pass is what made clipped effects cost a full weight-gradient pass more than unclipped ones.
    """
    if method not in ("auto", "gram", "materialise"):
        raise SampleEffectError(f"unknown norm method '{method}'; choose auto, gram or materialise")
    chosen = norm_method(fs) if method == "auto" else method
    if chosen == "gram" and norm_method(fs, force_gram=True) == "gram":
        return sq_norms_gram(fs), None
    n = int(fs[0].b.shape[0])
    sq_parts, dot_parts = [], []
    flat = None if g is None else g.reshape(-1)
    for r in range(0, n, rows):
        block = materialise_sum(fs, slice(r, min(n, r + rows))).flatten(1)
        sq_parts.append(block.pow(2).sum(1))
        if flat is not None:
            dot_parts.append(block @ flat.to(block.dtype))
    return torch.cat(sq_parts), (torch.cat(dot_parts) if flat is not None else None)


def weight_decay_dot(
    params: Mapping[str, torch.Tensor], target: TargetVector, hypers: Mapping[str, ParamHyper]
) -> float:
    """sum over parameters of wd * <theta, G>: the part of an SGD effect that is the same for every example."""
    return sum(
        hypers[n].weight_decay * float((params[n].detach().to(target.vector[n].dtype) * target.vector[n]).sum())
        for n in params
        if hypers[n].weight_decay
    )


@dataclass(frozen=True)
class EffectSettings:
    """Everything a backend needs besides the model and parameters: target G, update, state and how to compute.

    `target` is None where only the per-example updates are wanted (`Backend.updates`, for projections).
    """

    target: TargetVector | None
    update: UpdateConfig
    state: OptimizerState
    hypers: Mapping[str, ParamHyper]  # per chosen parameter, from `state.hyper(name, update)`
    compute: ComputeConfig
    objective: Objective = SFT
    plans: PlanCache | None = None  # ghost self-check results (None: the cache the model carries)

    @classmethod
    def build(
        cls, params: Mapping[str, torch.Tensor], target: TargetVector | None, update: UpdateConfig,
        state: OptimizerState | None = None, compute: ComputeConfig | None = None, objective: Objective = SFT,
        plans: PlanCache | None = None,
    ) -> EffectSettings:
        """Settings with defaults filled in and each parameter's hyper-parameters resolved from `state`."""
        state = state or OptimizerState()
        hypers = {name: state.hyper(name, update) for name in params}
        return cls(target, update, state, hypers, compute or ComputeConfig(), objective, plans)


@dataclass(frozen=True)
class BatchEffects:
    """What a backend computes for one batch of examples (float64, in the order of `indices`).

    `grad_norm` is None where the path did not compute gradient norms (jvp; ghost SGD without
    clipping unless `ComputeConfig.grad_norms`).
    """

    indices: list[int]
    effect: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray | None


@dataclass(frozen=True)
class UpdateRows:
    """What a backend forms for one batch when asked for updates: each chosen parameter's per-example
    update per unit lr d(s) [E, *shape] (clipped, optimiser-transformed), formed lazily one parameter
    at a time, and the examples' losses (in the accumulation dtype)."""

    indices: list[int]
    losses: torch.Tensor
    updates: Iterator[tuple[str, torch.Tensor]]


@dataclass(frozen=True)
class DirectionalBatch:
    """One jvp chunk: example indices, <g(s), G> per example and the examples' losses."""

    indices: list[int]
    dots: torch.Tensor
    losses: torch.Tensor


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
    """The whole plan: path, chunk size and the expected peak memory in bytes.

    `ghost` is the ghost path's coverage and self-check result (None on the vmap and jvp paths).
    """

    method: str
    chunk: int
    max_len: int
    layers: list[LayerPlan]
    peak_bytes: int
    ghost: GhostPlan | None = None

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


def _max_len(examples: Sequence[TokenizedExample]) -> int:
    return max(int(s.shape[0]) for ex in examples for s in ex.sequences)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.double().cpu().numpy()


B = TypeVar("B")


class Backend(ABC, Generic[B]):
    """One engine path: streams per-example batches and turns each into a `BatchEffects`."""

    name: ClassVar[str]

    def __init__(self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], settings: EffectSettings) -> None:
        self.model = model
        self.params = params
        self.settings = settings

    @classmethod
    @abstractmethod
    def plan(
        cls, model: torch.nn.Module, params: Mapping[str, torch.Tensor], examples: Sequence[TokenizedExample],
        update: UpdateConfig, compute: ComputeConfig, plans: PlanCache | None = None,
    ) -> Plan:
        """What this path would do for `examples` and how much memory it expects (no computation)."""

    @abstractmethod
    def batches(self, examples: Sequence[TokenizedExample]) -> Iterator[B]:
        """The engine's per-example objects for `examples`, chunk by chunk."""

    @abstractmethod
    def run(self, batch: B) -> BatchEffects:
        """Effects, losses and (where computed) gradient norms of one batch."""

    def effects(self, examples: Sequence[TokenizedExample]) -> Iterator[BatchEffects]:
        """`run` over every batch of `examples`."""
        for batch in self.batches(examples):
            yield self.run(batch)

    def update_rows(self, batch: B) -> UpdateRows:
        """The per-example updates d(s) of one batch; paths that never form them (jvp) raise ConfigError."""
        raise ConfigError("ComputeConfig", f"the {self.name} method forms no per-example updates; use <method> ghost or vmap")

    def updates(self, examples: Sequence[TokenizedExample]) -> Iterator[UpdateRows]:
        """`update_rows` over every batch of `examples`."""
        for batch in self.batches(examples):
            yield self.update_rows(batch)

    def _target(self) -> TargetVector:
        """G, which computing effects needs (the settings of an updates-only run have none)."""
        if self.settings.target is None:
            raise SampleEffectError(f"the {self.name} backend was built without a target; it can only form updates")
        return self.settings.target


class VmapBackend(Backend[GradientBatch]):
    """Reference path: per-example gradients, clipping, the simulated step, then <d(s), G> layer by layer."""

    name = "vmap"

    @classmethod
    def plan(
        cls, model: torch.nn.Module, params: Mapping[str, torch.Tensor], examples: Sequence[TokenizedExample],
        update: UpdateConfig, compute: ComputeConfig, plans: PlanCache | None = None,
    ) -> Plan:
        """One vmap chunk under the budget; every layer is formed whole."""
        max_len = _max_len(examples)
        chunk = plan_chunk(model, params, max_len, compute)
        peak = model_bytes(model) + chunk * bytes_per_sequence(model, params, max_len)
        layers = [LayerPlan(n, tuple(p.shape), ["vmap"], "vmap", chunk) for n, p in params.items()]
        return Plan(cls.name, chunk, max_len, layers, peak)

    def batches(self, examples: Sequence[TokenizedExample]) -> Iterator[GradientBatch]:
        """Per-example gradients from `iter_example_gradients`."""
        s = self.settings
        return iter_example_gradients(self.model, self.params, examples, s.compute, objective=s.objective)

    def run(self, batch: GradientBatch) -> BatchEffects:
        """Clip, step and dot every layer's per-example gradients with G."""
        target = self._target().vector
        sq = sum((g.flatten(1) ** 2).sum(1) for g in batch.grads.values())
        total = torch.zeros_like(sq)
        for name, d in self._steps(batch, clip_coefficients(sq, self.settings.update.clip)):
            total += d.flatten(1) @ target[name].flatten().to(d.dtype)
        return BatchEffects(batch.indices, _numpy(total), _numpy(batch.losses), _numpy(sq.sqrt()))

    def update_rows(self, batch: GradientBatch) -> UpdateRows:
        """Clip and step every layer's per-example gradients."""
        sq = sum((g.flatten(1) ** 2).sum(1) for g in batch.grads.values())
        return UpdateRows(batch.indices, batch.losses, self._steps(batch, clip_coefficients(sq, self.settings.update.clip)))

    def _steps(self, batch: GradientBatch, coef: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, d rows) per layer: the clipped gradients through the rule's step."""
        s, update = self.settings, self.settings.update
        for name, g in batch.grads.items():
            p = self.params[name].detach().to(g.dtype)
            g = g * coef.view(-1, *([1] * (g.dim() - 1))) if update.clip is not None else g
            yield name, update.rule.step(g, p, s.hypers[name], s.state.param_state(name))


class GhostBackend(Backend[FactorBatch]):
    """Fast path: per-example gradients kept as factors, contracted with G layer by layer.

    SGD: e = -coef * sum_l <g_l, G_l> - wd <theta, G> with no per-example gradient formed; the
    clipping coefficient needs ||g||, from Gram forms or one layer's gradients at a time. Adam:
    each layer's per-example gradients are formed (in row chunks under the budget), clipped,
    stepped and dotted with G, then dropped.
    """

    name = "ghost"

    def __init__(self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], settings: EffectSettings) -> None:
        super().__init__(model, params, settings)
        update = settings.update
        self.need_norm = update.clip is not None or settings.compute.grad_norms
        target = settings.target
        self.decay = weight_decay_dot(params, target, settings.hypers) if update.rule.is_linear and target is not None else 0.0
        self.budget = free_budget(model, settings.compute)  # row blocks share what the weights leave
        self._gemm_targets: dict[str, torch.Tensor] = {}  # G in a bfloat16 model's GEMM dtype, made on first use

    @classmethod
    def plan(
        cls, model: torch.nn.Module, params: Mapping[str, torch.Tensor], examples: Sequence[TokenizedExample],
        update: UpdateConfig, compute: ComputeConfig, plans: PlanCache | None = None,
    ) -> Plan:
        """Coverage (with the self-check result so far), per-layer norm method and block rows, and the peak."""
        max_len = _max_len(examples)
        max_resp = max(ex.n_responses for ex in examples)
        acc = accumulation_dtype(next(iter(params.values())).dtype)
        acc_size = torch.empty((), dtype=acc).element_size()
        budget = free_budget(model, compute)
        chunk = plan_chunk(model, params, max_len, compute, activation_bytes_per_sequence)
        modules = dict(model.named_modules())
        ghost = (plans if plans is not None else ghost_plans(model)).ghost_plan(model, params)
        uncovered = ghost.uncovered
        rows = max(1, min(chunk, sum(ex.n_responses for ex in examples)))  # examples per chunk
        slots = max_len * max_resp
        linear = update.rule.is_linear
        need_norm = update.clip is not None or compute.grad_norms or not linear
        layers: list[LayerPlan] = []
        block_peak = 0
        for name, p in params.items():
            if name in uncovered:
                layers.append(LayerPlan(name, tuple(p.shape), ["vmap"], "vmap", rows))
                block_peak = max(block_peak, rows * p.numel() * acc_size * 2)
                continue
            fs = [rule_for_kind(k).meta_factor(modules[m], pn, rows, slots) for m, pn, k in ghost.coverage[name]]
            norm = "-"
            if need_norm:
                norm = norm_method(fs) if compute.norm_method == "auto" else compute.norm_method
            copies = 1 if linear else 2
            block = block_rows(Factor(fs[0].kind, None, torch.empty(rows, 1, device="meta", dtype=acc), p.shape), copies, budget)
            if not linear or norm == "materialise":
                block_peak = max(block_peak, block * p.numel() * acc_size * copies)
            if norm == "gram":
                block_peak = max(block_peak, rows * slots * slots * acc_size * 2)
            layers.append(LayerPlan(name, tuple(p.shape), [k for _, _, k in ghost.coverage[name]], norm, block))
        if uncovered:
            block_peak += rows * bytes_per_sequence(model, {n: params[n] for n in uncovered}, max_len)
        peak = model_bytes(model) + chunk * activation_bytes_per_sequence(model, params, max_len) + block_peak
        method = "ghost" if compute.method == "auto" else compute.method
        return Plan(method, chunk, max_len, layers, int(peak), ghost)

    def batches(self, examples: Sequence[TokenizedExample]) -> Iterator[FactorBatch]:
        """Per-example factors from `iter_example_factors` (self-check results kept in `settings.plans`)."""
        s = self.settings
        return iter_example_factors(self.model, self.params, examples, s.compute, objective=s.objective, plans=s.plans)

    def run(self, batch: FactorBatch) -> BatchEffects:
        """Effects of one factor batch: dots with G for linear rules (from the norm pass when there is one), formed
        row blocks otherwise."""
        update = self.settings.update
        target = self._target().vector
        linear = update.rule.is_linear
        sq = None
        formed: dict[str, torch.Tensor] = {}  # a linear rule's dots read off the norm pass's formed blocks
        if self.need_norm:
            method = self.settings.compute.norm_method
            parts = []
            for name, fs in batch.factors.items():
                s2, d = sq_norms_and_dots(fs, method, block_rows(fs[0], 1, self.budget), target[name] if linear else None)
                parts.append(s2)
                if d is not None:
                    formed[name] = d
            sq = sum(parts)
        coef = clip_coefficients(sq, update.clip) if update.clip is not None else None  # type: ignore[arg-type]
        if linear:
            dots = sum(formed[name] if name in formed else sum(factor_dot(f, self._gemm_target(name, f)) for f in fs)
                       for name, fs in batch.factors.items())
            eff = -(coef * dots if coef is not None else dots) - self.decay  # type: ignore[operator]
        else:
            eff, sq_mat = self._stepped(batch, coef)
            if not self.need_norm:
                sq = sq_mat
        gnorm = None if sq is None else _numpy(sq.sqrt())  # type: ignore[union-attr]
        return BatchEffects(batch.indices, _numpy(eff), _numpy(batch.losses), gnorm)  # type: ignore[arg-type]

    def update_rows(self, batch: FactorBatch) -> UpdateRows:
        """Each layer's per-example gradients formed whole from the factors, clipped and stepped."""
        update = self.settings.update
        coef = None
        if update.clip is not None:
            sq: torch.Tensor | None = None
            for fs in batch.factors.values():
                part = materialise_sum(fs).flatten(1).pow(2).sum(1)
                sq = part if sq is None else sq + part
            assert sq is not None
            coef = clip_coefficients(sq, update.clip)
        return UpdateRows(batch.indices, batch.losses, self._formed_steps(batch, coef))

    def _formed_steps(self, batch: FactorBatch, coef: torch.Tensor | None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, d rows) per layer, forming one layer's gradients at a time."""
        s = self.settings
        for name, fs in batch.factors.items():
            g = materialise_sum(fs)
            if coef is not None:
                g = g * coef.view(-1, *([1] * (g.dim() - 1)))
            p = self.params[name].detach().to(batch.losses.dtype)
            yield name, s.update.rule.step(g, p, s.hypers[name], s.state.param_state(name))

    def _gemm_target(self, name: str, f: Factor) -> torch.Tensor:
        """G of `name` in the dtype `factor_dot` hands the factor's rule: a narrow factor's `gemm` dtype
        (a bfloat16 copy of G, made once per run), else G as it is."""
        g = self._target().vector[name]
        if f.gemm is None or g.dtype == f.gemm:
            return g
        if name not in self._gemm_targets:
            self._gemm_targets[name] = g.to(f.gemm)
        return self._gemm_targets[name]

    def _stepped(self, batch: FactorBatch, coef: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(effects, squared norms of the formed gradients) through the rule's per-layer `effect_rows`."""
        s = self.settings
        n_ex = len(batch.indices)
        eff = torch.zeros(n_ex, dtype=batch.losses.dtype, device=batch.losses.device)
        sq_mat = torch.zeros_like(eff)
        for name, fs in batch.factors.items():
            p = self.params[name].detach().to(eff.dtype)
            h = s.hypers[name]
            g_target = self._target().vector[name]
            eff += s.update.rule.shared_dot(p, g_target, h)
            step = block_rows(fs[0], 2, self.budget)
            for r0 in range(0, n_ex, step):
                rows = slice(r0, min(n_ex, r0 + step))
                g = materialise_sum(fs, rows, writable=True)  # effect_rows may overwrite it
                if coef is not None:
                    g.mul_(coef[rows].view(-1, *([1] * (g.dim() - 1))))
                dots, sq_rows = s.update.rule.effect_rows(
                    g, p, g_target, h, s.state.param_state(name), want_sq_norms=not self.need_norm,
                )
                eff[rows] += dots
                if sq_rows is not None:
                    sq_mat[rows] += sq_rows
        return eff, sq_mat


class JvpBackend(Backend[DirectionalBatch]):
    """SGD without clipping: e(s) = -<g(s), G> - wd <theta, G>, by forward-mode AD (no grad norms)."""

    name = "jvp"

    def __init__(self, model: torch.nn.Module, params: Mapping[str, torch.Tensor], settings: EffectSettings) -> None:
        update = settings.update
        if not update.rule.is_linear or update.clip is not None:
            raise ConfigError("ComputeConfig", "the jvp method computes SGD effects without clipping only; use <method> vmap")
        super().__init__(model, params, settings)
        self.decay = weight_decay_dot(params, self._target(), settings.hypers)

    @classmethod
    def plan(
        cls, model: torch.nn.Module, params: Mapping[str, torch.Tensor], examples: Sequence[TokenizedExample],
        update: UpdateConfig, compute: ComputeConfig, plans: PlanCache | None = None,
    ) -> Plan:
        """One forward-mode chunk under the budget; no per-layer plan."""
        max_len = _max_len(examples)
        chunk = plan_chunk(model, params, max_len, compute, activation_bytes_per_sequence)
        peak = model_bytes(model) + chunk * activation_bytes_per_sequence(model, params, max_len)
        return Plan(cls.name, chunk, max_len, [], peak)

    def batches(self, examples: Sequence[TokenizedExample]) -> Iterator[DirectionalBatch]:
        """<g(s), G> and losses from `iter_example_directional`."""
        s = self.settings
        for idx, dots, losses in iter_example_directional(
            self.model, self.params, examples, self._target().vector, s.compute, objective=s.objective
        ):
            yield DirectionalBatch(idx, dots, losses)

    def run(self, batch: DirectionalBatch) -> BatchEffects:
        """-<g(s), G> minus the shared weight-decay term."""
        return BatchEffects(batch.indices, (-batch.dots.double() - self.decay).cpu().numpy(), _numpy(batch.losses), None)


BACKENDS: dict[str, type[Backend]] = {"auto": GhostBackend, "ghost": GhostBackend, "vmap": VmapBackend, "jvp": JvpBackend}


def backend_class(method: str) -> type[Backend]:
    """The backend `ComputeConfig.method` names (auto = ghost); SampleEffectError for any other name."""
    try:
        return BACKENDS[method]
    except KeyError:
        raise SampleEffectError(f"unknown engine method '{method}'; choose auto, ghost, vmap or jvp") from None


def make_backend(model: torch.nn.Module, params: Mapping[str, torch.Tensor], settings: EffectSettings) -> Backend:
    """The backend for `settings.compute.method`, ready to stream batches of `model`'s `params`."""
    return backend_class(settings.compute.method)(model, params, settings)
