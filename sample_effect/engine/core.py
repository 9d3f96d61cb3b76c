"""Per-example gradients and mean gradients over chunks of examples, under a memory budget.

The engine turns tokenised examples into the two gradient objects the sample effect needs:
the per-example gradient g(s) (mean over the example's responses) and the mean-loss gradient
of a set (for loss targets). It only decides *how* to compute (chunking, dtype, progress); the
maths of one chunk lives in `sample_effect.kernels`.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from sample_effect.data.examples import TokenizedExample, pad_sequences
from sample_effect.errors import ConfigError, SampleEffectError, literal
from sample_effect.kernels import per_sequence_directional, per_sequence_grads
from sample_effect.kernels.ghost import (
    Capture,
    Factor,
    capture_factors,
    group_examples,
    plan_coverage,
    verify_factors,
)
from sample_effect.models.loading import accumulation_dtype, config_int, position_limit
from sample_effect.objectives.base import SFT, Objective, SFTObjective
from sample_effect.objectives.losses import example_losses
from sample_effect.runtime.cpu import resolve_gemm_dtype

log = logging.getLogger("sample_effect")

_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str | int | float | None) -> int | None:
    """'4GB' / '512MiB' / 1e9 -> bytes; None stays None (no budget)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
        if not m or m.group(2).upper() not in _UNITS:
            raise SampleEffectError(f"cannot read memory budget '{text}' (use e.g. 4GB, 512MB, 2GiB)")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise SampleEffectError(f"memory budget must be positive, got {text}")
    return value


@dataclass
class ComputeConfig:
    """How to compute; never changes a result beyond float rounding.

    batch_size: most sequences per vmap chunk. memory_budget: bytes (or '4GB'); the chunk is
    shrunk to fit the estimate. progress: show tqdm bars.
    """

    batch_size: int = 16
    memory_budget: int | str | None = "4GB"
    progress: bool = True
    method: str = "auto"  # "auto" (= "ghost"), "ghost", "vmap" (reference) or "jvp" (SGD without clipping)
    grad_norms: bool = False  # ghost/jvp paths: also compute grad_norm when nothing needs it (SGD, no clip)
    norm_method: str = "auto"  # ghost path: "auto", "gram" or "materialise" (per layer; speed only)
    # ghost path of a bfloat16 / float16 model: "model" keeps the Linear factors in the model's dtype and
    # runs their GEMMs and elementwise products in it, with float32 sums (as its own backward does);
    # "accumulate" does it all in float32 (slower where bf16 matrix units are fast; rounds G and the GEMM
    # outputs less); "auto" is "model" on a GPU or a CPU with native bf16 / fp16 instructions, else
    # "accumulate" (`sample_effect.runtime.cpu.resolve_gemm_dtype`: emulated bf16 GEMMs are many times slower)
    gemm_dtype: str = "auto"

    def budget_bytes(self) -> int | None:
        """`memory_budget` in bytes (see `parse_bytes`); None means no budget."""
        return parse_bytes(self.memory_budget)


def averages_responses(objective: Objective) -> bool:
    """Whether `objective` weighs an example's responses by SFT's 1 / n_responses (its weights are not overridden).

    Such objectives take the mean-over-responses path, whatever instance they are: the module-level
    `SFT`, a fresh `SFTObjective()`, or a subclass that changes only the sequence loss.
    """
    cls = type(objective)
    return (isinstance(objective, SFTObjective) and cls.sequence_weights is SFTObjective.sequence_weights
            and cls.weights_of is SFTObjective.weights_of)


def split_parameters(model: torch.nn.Module, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every parameter and buffer not in `params`, detached: the constants of a functional call."""
    consts = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    consts.update({n: b for n, b in model.named_buffers()})
    return consts


def _activations_per_token(model: torch.nn.Module) -> int:
    """Rough count of activation values one token keeps for the backward pass, from the config."""
    hidden = config_int(model, "hidden_size", "n_embd", "d_model", default=1024)
    layers = config_int(model, "num_hidden_layers", "n_layer", default=12)
    vocab = config_int(model, "vocab_size", default=32000)
    inter = config_int(model, "intermediate_size", "n_inner", default=4 * hidden) or 4 * hidden
    return layers * (12 * hidden + 3 * inter) + 4 * vocab


def bytes_per_sequence(model: torch.nn.Module, params: Mapping[str, torch.Tensor], seq_len: int) -> int:
    """Rough peak bytes one sequence adds to a vmap chunk: its gradients plus its activations."""
    p = next(iter(params.values()))
    itemsize = p.element_size()
    acc_itemsize = torch.empty((), dtype=accumulation_dtype(p.dtype)).element_size()
    n_params = sum(t.numel() for t in params.values())
    largest = max(t.numel() for t in params.values())
    acts = seq_len * _activations_per_token(model) * max(itemsize, 4)
    grads = n_params * (itemsize + acc_itemsize) + 6 * largest * acc_itemsize
    return int(acts + grads)


def activation_bytes_per_sequence(model: torch.nn.Module, params: Mapping[str, torch.Tensor], seq_len: int) -> int:
    """Rough peak bytes one sequence adds to a ghost chunk: activations plus the captured output gradients."""
    p = next(iter(params.values()))
    itemsize = max(p.element_size(), torch.empty((), dtype=accumulation_dtype(p.dtype)).element_size())
    return int(2 * seq_len * _activations_per_token(model) * itemsize + 8 * seq_len * seq_len * itemsize)


def check_lengths(model: torch.nn.Module, examples: Sequence[TokenizedExample]) -> None:
    """Error (naming the example) if a sequence is longer than the model's position limit."""
    limit = position_limit(model)
    if not limit:
        return
    for ex in examples:
        for s in ex.sequences:
            if s.shape[0] > limit:
                raise ConfigError(
                    "check_lengths",
                    f"example '{literal(ex.id)}' has {s.shape[0]} tokens but the model accepts at most {limit}; "
                    "pass <tokenize_examples.max_length> to truncate",
                )


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights: the part of a memory budget no chunk can use."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def free_budget(model: torch.nn.Module, compute: ComputeConfig) -> int | None:
    """The memory budget left beside the weights (None: no budget): what chunks and row blocks share."""
    budget = compute.budget_bytes()
    return None if budget is None else budget - model_bytes(model)


def plan_chunk(
    model: torch.nn.Module, params: Mapping[str, torch.Tensor], max_len: int, compute: ComputeConfig,
    per_sequence: Callable[[torch.nn.Module, Mapping[str, torch.Tensor], int], int] | None = None,
) -> int:
    """Sequences per chunk: at most batch_size, and within the memory budget.

    The budget covers the whole process's tensors: the model's weights are taken off it first,
    then it is split into per-sequence shares (a 7B float32 model leaves 80 GB - 28 GB for them).
    """
    if compute.batch_size < 1:
        raise ConfigError("ComputeConfig", f"<batch_size> must be >= 1, got {compute.batch_size}")
    free = free_budget(model, compute)
    if free is None:
        return compute.batch_size
    weights = model_bytes(model)
    budget = free + weights
    per_seq = (per_sequence or bytes_per_sequence)(model, params, max_len)
    if per_seq > free:
        raise ConfigError(
            "ComputeConfig",
            f"memory budget {budget / 1e9:.3g} GB is too small for one example of {max_len} tokens "
            f"(needs about {(weights + per_seq) / 1e9:.3g} GB: {weights / 1e9:.3g} GB of weights and "
            f"{per_seq / 1e9:.3g} GB for the sequence); raise <memory_budget> or lower <tokenize_examples.max_length>",
        )
    return max(1, min(compute.batch_size, free // per_seq))


def _flat_sequences(examples: Sequence[TokenizedExample]) -> list[tuple[int, torch.Tensor, int]]:
    return [(i, s, r) for i, ex in enumerate(examples) for s, r in zip(ex.sequences, ex.response_starts)]


def _pad_part(part: Sequence[tuple[int, torch.Tensor, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_sequences([s for _, s, _ in part], [r for _, _, r in part])
    return ids.to(device), mask.to(device)


def collate(examples: Sequence[TokenizedExample], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All responses of `examples` as one right-padded batch: (ids, label mask, owner example index per row)."""
    flat = _flat_sequences(examples)
    ids, mask = _pad_part(flat, torch.device(device))
    return ids, mask, torch.tensor([i for i, _, _ in flat], device=ids.device)


def forward_logits(
    model: torch.nn.Module, params: Mapping[str, torch.Tensor], constants: Mapping[str, torch.Tensor], input_ids: torch.Tensor
) -> torch.Tensor:
    """Logits of a right-padded batch, with `params` substituted into the model."""
    out = functional_call(model, {**constants, **params}, args=(), kwargs={"input_ids": input_ids, "use_cache": False})
    return out.logits


def mean_loss_gradient(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    compute: ComputeConfig | None = None,
    desc: str = "target gradient",
    objective: Objective = SFT,
) -> tuple[dict[str, torch.Tensor], float]:
    """Gradient of the mean example loss over `examples` (and that mean loss), by batched backward.

    An example's loss is the objective's weighted sum of its sequences' losses (for SFT the mean of
    its responses'), so each sequence is weighted by w_k / n_examples. Returned in the accumulation dtype.
    """
    compute = compute or ComputeConfig()
    if not examples:
        raise SampleEffectError("the target set is empty")
    check_lengths(model, examples)
    flat = _flat_sequences(examples)
    chunk = plan_chunk(model, params, max(int(s.shape[0]) for _, s, _ in flat), compute)
    consts = split_parameters(model, params)
    acc = accumulation_dtype(next(iter(params.values())).dtype)
    total = {n: torch.zeros(p.shape, dtype=acc, device=p.device) for n, p in params.items()}
    if averages_responses(objective):  # 1 / (n_responses * n_examples), bit for bit as before
        weights = [1.0 / (examples[i].n_responses * len(examples)) for i, _, _ in flat]
    else:
        weights = [w / len(examples) for w in objective.weights_of(examples, [i for i, _, _ in flat])]
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    loss_sum = 0.0
    with tqdm(total=len(flat), desc=desc, unit="seq", disable=not compute.progress, leave=False) as bar:
        for start in range(0, len(flat), chunk):
            part = flat[start : start + chunk]
            device = next(iter(params.values())).device
            ids, mask = _pad_part(part, device)
            logits = forward_logits(model, leaves, consts, ids)
            seq_loss = objective.sequence_loss(logits, ids, mask)
            w = torch.tensor(weights[start : start + chunk], dtype=seq_loss.dtype, device=device)
            loss = (seq_loss * w).sum()
            grads = torch.autograd.grad(loss, list(leaves.values()))
            for n, g in zip(leaves, grads):
                total[n] += g.to(acc)
            loss_sum += float(loss.detach())
            bar.update(len(part))
    return total, loss_sum


@dataclass
class GradientBatch:
    """Per-example gradients of consecutive examples: indices into the input and [E, ...] tensors."""

    indices: list[int]
    grads: dict[str, torch.Tensor]
    losses: torch.Tensor


def iter_example_gradients(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    compute: ComputeConfig | None = None,
    desc: str = "per-example gradients",
    objective: Objective = SFT,
) -> Iterator[GradientBatch]:
    """Yield per-example gradients g(s) = mean of the example's response gradients, chunk by chunk.

    Sequences stream through vmap in chunks that fit the budget; an example whose responses
    straddle a chunk boundary is carried over and emitted once complete. Gradients come back in
    the accumulation dtype (float32 for half-precision models).
    """
    compute = compute or ComputeConfig()
    flat = _flat_sequences(examples)
    if not flat:
        raise SampleEffectError("the dataset is empty")
    check_lengths(model, examples)
    chunk = plan_chunk(model, params, max(int(s.shape[0]) for _, s, _ in flat), compute)
    consts = split_parameters(model, params)
    first_param = next(iter(params.values()))
    acc = accumulation_dtype(first_param.dtype)
    device = first_param.device
    last_seq_of = {}
    for k, (i, _, _) in enumerate(flat):
        last_seq_of[i] = k
    carry: GradientBatch | None = None
    detached = {n: p.detach() for n, p in params.items()}
    weights = objective.weights_of(examples, [i for i, _, _ in flat])
    with tqdm(total=len(flat), desc=desc, unit="seq", disable=not compute.progress, leave=False) as bar:
        for start in range(0, len(flat), chunk):
            part = flat[start : start + chunk]
            ids, mask = _pad_part(part, device)
            grads, losses = per_sequence_grads(model, detached, consts, ids, mask, objective.sequence_loss)
            owners = [i for i, _, _ in part]
            first = owners[0]
            local = torch.tensor([o - first for o in owners], device=device)
            n_local = owners[-1] - first + 1
            w = torch.tensor(weights[start : start + len(part)], dtype=acc, device=device)
            ex_grads = {}
            for n, g in grads.items():
                g = g.to(acc) * w.view(-1, *([1] * (g.dim() - 1)))
                ex_grads[n] = torch.zeros((n_local, *g.shape[1:]), dtype=acc, device=device).index_add_(0, local, g)
            ex_losses = torch.zeros(n_local, dtype=acc, device=device).index_add_(0, local, losses.detach().to(acc) * w)
            if carry is not None:  # the first example of this chunk began in the previous one
                for n in ex_grads:
                    ex_grads[n][0] += carry.grads[n][0]
                ex_losses[0] += carry.losses[0]
                carry = None
            indices = list(range(first, first + n_local))
            end = start + len(part) - 1
            if last_seq_of[indices[-1]] > end:  # the last example continues in the next chunk
                carry = GradientBatch([indices[-1]], {n: g[-1:].clone() for n, g in ex_grads.items()}, ex_losses[-1:].clone())
                indices = indices[:-1]
                ex_grads = {n: g[:-1] for n, g in ex_grads.items()}
                ex_losses = ex_losses[:-1]
            bar.update(len(part))
            if indices:
                yield GradientBatch(indices, ex_grads, ex_losses)


@torch.no_grad()
def example_loss_values(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], batch_size: int = 16, objective: Objective = SFT
) -> torch.Tensor:
    """Loss of every example (the objective's weighted sum of its sequences' losses) by batched forward passes, no grad."""
    check_lengths(model, examples)
    flat = _flat_sequences(examples)
    device = next(model.parameters()).device
    seq_losses = []
    for start in range(0, len(flat), batch_size):
        part = flat[start : start + batch_size]
        ids, mask = _pad_part(part, device)
        seq_losses.append(objective.sequence_loss(model(input_ids=ids, use_cache=False).logits, ids, mask).double())
    owners = torch.tensor([i for i, _, _ in flat], device=device)
    if averages_responses(objective):  # the mean of the responses' losses, as the trainers compute it
        return example_losses(torch.cat(seq_losses), owners, len(examples))
    w = torch.tensor(objective.weights_of(examples, owners.tolist()), dtype=torch.float64, device=device)
    return torch.zeros(len(examples), dtype=torch.float64, device=device).index_add_(0, owners, torch.cat(seq_losses) * w)


def iter_example_directional(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    direction: Mapping[str, torch.Tensor],
    compute: ComputeConfig | None = None,
    desc: str = "directional derivatives",
    objective: Objective = SFT,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield (example indices, <g(s), direction>, loss) chunk by chunk with forward-mode AD.

    No per-example gradient is formed; a chunk holds whole examples (all their responses).
    """
    compute = compute or ComputeConfig()
    check_lengths(model, examples)
    flat = _flat_sequences(examples)
    if not flat:
        raise SampleEffectError("the dataset is empty")
    cap = plan_chunk(model, params, max(int(s.shape[0]) for _, s, _ in flat), compute)
    consts = split_parameters(model, params)
    first_param = next(iter(params.values()))
    acc = accumulation_dtype(first_param.dtype)
    device = first_param.device
    with tqdm(total=len(flat), desc=desc, unit="seq", disable=not compute.progress, leave=False) as bar:
        for i, j, part in _whole_example_chunks(examples, cap):
            ids, mask = _pad_part(part, device)
            losses, dots = per_sequence_directional(model, params, consts, ids, mask, objective.sequence_loss, direction)
            owners = torch.tensor([k - i for k, _, _ in part], device=device)
            if averages_responses(objective):  # the mean over responses, bit for bit as before
                yield list(range(i, j)), example_losses(dots.to(acc), owners, j - i), example_losses(losses.to(acc), owners, j - i)
            else:
                w = torch.tensor(objective.weights_of(examples, [k for k, _, _ in part]), dtype=acc, device=device)
                zero = torch.zeros(j - i, dtype=acc, device=device)
                yield (list(range(i, j)), zero.index_add(0, owners, dots.to(acc) * w),
                       zero.index_add(0, owners, losses.to(acc) * w))
            bar.update(len(part))


def _whole_example_chunks(
    examples: Sequence[TokenizedExample], cap: int
) -> Iterator[tuple[int, int, list[tuple[int, torch.Tensor, int]]]]:
    """(first, end, sequences) of consecutive whole examples with at most `cap` sequences (or one example)."""
    i = 0
    while i < len(examples):
        j, n_seq = i, 0
        while j < len(examples) and (j == i or n_seq + examples[j].n_responses <= cap):
            n_seq += examples[j].n_responses
            j += 1
        yield i, j, [(k, s, r) for k in range(i, j) for s, r in zip(examples[k].sequences, examples[k].response_starts)]
        i = j


@dataclass
class FactorBatch:
    """Per-example gradients of consecutive examples kept as factors (see `sample_effect.kernels.ghost`)."""

    indices: list[int]
    factors: dict[str, list[Factor]]
    losses: torch.Tensor


@dataclass(frozen=True)
class GhostPlan:
    """How the ghost path splits one model's chosen parameters, and what its self-check found.

    `coverage` maps each parameter the layer rules handle to its uses (module name, its
    parameter name, kind); every other chosen name goes to vmap (`uncovered`). `key` is the set
    the rules cover before any check. `failed` is None while the once-per-model self-check against
    autograd has still to run; afterwards it holds the names that disagreed, which `coverage` no
    longer lists.
    """

    names: tuple[str, ...]
    coverage: Mapping[str, list[tuple[str, str, str]]]
    key: frozenset[str]
    failed: frozenset[str] | None = None

    @property
    def uncovered(self) -> list[str]:
        """Chosen names computed by vmap, in the order of the chosen parameters."""
        return [n for n in self.names if n not in self.coverage]

    @property
    def needs_check(self) -> bool:
        """True while the self-check has not run for this model and covered set."""
        return self.failed is None

    def after_check(self, failed: Iterable[str]) -> GhostPlan:
        """This plan once the self-check found `failed`: those names move to the vmap side."""
        bad = frozenset(failed)
        return GhostPlan(self.names, {n: u for n, u in self.coverage.items() if n not in bad}, self.key, bad)


class PlanCache:
    """Self-check results, per model (weakly referenced) and set of covered parameter names.

    A caller may own one and pass it to `iter_example_factors` / `compute_effects`; without one
    the engine uses the cache the model itself carries (`ghost_plans`), so the check runs once
    per model object. Copying or pickling a cache gives an empty one: a copied model is checked
    again.
    """

    def __init__(self) -> None:
        self._results: weakref.WeakKeyDictionary[torch.nn.Module, dict[frozenset[str], frozenset[str]]] = (
            weakref.WeakKeyDictionary()
        )

    def __reduce__(self) -> tuple[type[PlanCache], tuple[()]]:
        return (PlanCache, ())

    def ghost_plan(self, model: torch.nn.Module, params: Mapping[str, torch.Tensor]) -> GhostPlan:
        """The ghost plan for `params` of `model`, with the self-check result if it has run."""
        coverage, _ = plan_coverage(model, params)
        plan = GhostPlan(tuple(params), coverage, frozenset(coverage))
        known = self._results.get(model, {}).get(plan.key)
        return plan if known is None else plan.after_check(known)

    def record(self, model: torch.nn.Module, plan: GhostPlan, failed: Iterable[str]) -> GhostPlan:
        """Keep the self-check result for `model` and `plan.key`; return the plan after the check."""
        checked = plan.after_check(failed)
        assert checked.failed is not None
        self._results.setdefault(model, {})[plan.key] = checked.failed
        return checked

    def results(self, model: torch.nn.Module) -> dict[frozenset[str], frozenset[str]]:
        """{covered set: names that failed} for every check run on `model` (a copy; empty if none)."""
        return dict(self._results.get(model, {}))


_PLANS_ATTR = "_sample_effect_plans"


def ghost_plans(model: torch.nn.Module) -> PlanCache:
    """The plan cache `model` carries (made on first use): the default for the engine's ghost path."""
    cache = vars(model).get(_PLANS_ATTR)
    if cache is None:
        cache = vars(model)[_PLANS_ATTR] = PlanCache()
    return cache


def ghost_coverage(
    model: torch.nn.Module, params: Mapping[str, torch.Tensor], plans: PlanCache | None = None
) -> tuple[dict[str, list[tuple[str, str, str]]], list[str], frozenset | None]:
    """(covered parameter -> its uses, uncovered names, the self-check key if the check still has to run).

    The key is the set of parameters the module rules cover; once the check has run for this model
    and key, the parameters it failed are moved to the uncovered side and None is returned.
    """
    plan = (plans if plans is not None else ghost_plans(model)).ghost_plan(model, params)
    return dict(plan.coverage), plan.uncovered, plan.key if plan.needs_check else None


def _capture(
    params: Mapping[str, torch.Tensor], coverage: Mapping[str, list[tuple[str, str, str]]], check: bool,
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, loss_fn: Callable, weights: torch.Tensor,
) -> Capture:
    """`capture_factors` with the covered parameters requiring grad, their flags restored whatever happens."""
    flags = {n: params[n].requires_grad for n in coverage}
    try:
        for n in coverage:
            params[n].requires_grad_(True)
        wanted = {n: params[n] for n in coverage} if check else None
        return capture_factors(model, coverage, ids, mask, loss_fn, weights, wanted)
    finally:
        for n, f in flags.items():
            params[n].requires_grad_(f)


def _dense_factors(
    model: torch.nn.Module, params: Mapping[str, torch.Tensor], names: list[str], ids: torch.Tensor,
    mask: torch.Tensor, loss_fn: Callable, w: torch.Tensor, owners: torch.Tensor, n_ex: int,
) -> tuple[dict[str, list[Factor]], torch.Tensor]:
    """Per-example gradients of `names` by vmap, as dense factors, and the per-sequence losses."""
    sub = {n: params[n].detach() for n in names}
    grads, seq_losses = per_sequence_grads(model, sub, split_parameters(model, sub), ids, mask, loss_fn)
    factors = {}
    for n, g in grads.items():
        g = g.to(w.dtype) * w.view(-1, *([1] * (g.dim() - 1)))
        dense = torch.zeros((n_ex, *g.shape[1:]), dtype=w.dtype, device=w.device).index_add_(0, owners, g)
        factors[n] = [Factor("dense", None, dense, params[n].shape)]
    return factors, seq_losses.detach()


def self_check_rtol(param_dtype: torch.dtype, acc: torch.dtype) -> float:
    """Tolerance of the ghost self-check: the factor sums (accumulated in `acc`) against autograd's batch gradient.

    1e3 eps of the accumulation dtype, and at least 2 eps of the parameters' dtype: autograd's
    gradient of a bfloat16 model is itself rounded to bfloat16, so on SmolLM2-135M (bf16, B 4,
    T 128) every parameter differed from the float32 factor sums by 0.8e-3 to 1.3e-3 and failed a
    1.2e-4 test, which sent the whole model down the vmap path (2.6x the floor instead of about 1x).
    A wrong layer rule (a missed use of a tied weight, say) is off by far more than 2 bf16 eps
    (1.6e-2) unless the missed use carries under about 1.6% of the gradient's norm.
    """
    return max(1e3 * torch.finfo(acc).eps, 2 * torch.finfo(param_dtype).eps)


def iter_example_factors(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    compute: ComputeConfig | None = None,
    desc: str = "per-example factors",
    objective: Objective = SFT,
    plans: PlanCache | None = None,
) -> Iterator[FactorBatch]:
    """Yield per-example gradient factors of whole examples, chunk by chunk, from batched backwards.

    Parameters of Linear / Conv1D / Embedding / norm layers come as ghost factors from one batched
    forward+backward; any other parameter comes as a dense [E, *shape] gradient from vmap. The
    first time a model is seen, the factor sums are checked against autograd's batch gradient and
    any parameter that disagrees is moved to the vmap side; the result is kept in `plans` (default:
    the cache the model carries, `ghost_plans(model)`).
    """
    compute = compute or ComputeConfig()
    check_lengths(model, examples)
    flat = _flat_sequences(examples)
    if not flat:
        raise SampleEffectError("the dataset is empty")
    cap = plan_chunk(model, params, max(int(s.shape[0]) for _, s, _ in flat), compute, activation_bytes_per_sequence)
    first_param = next(iter(params.values()))
    acc = accumulation_dtype(first_param.dtype)
    device = first_param.device
    cache = plans if plans is not None else ghost_plans(model)
    plan = cache.ghost_plan(model, params)
    rtol = self_check_rtol(first_param.dtype, acc)
    if compute.gemm_dtype not in ("auto", "model", "accumulate"):
        raise ConfigError("ComputeConfig",
                          f"<gemm_dtype> must be 'auto', 'model' or 'accumulate', got {literal(repr(compute.gemm_dtype))}")
    lowp_gemm = resolve_gemm_dtype(compute.gemm_dtype, first_param.dtype, device) == "model"
    with tqdm(total=len(flat), desc=desc, unit="seq", disable=not compute.progress, leave=False) as bar:
        for i, j, part in _whole_example_chunks(examples, cap):
            ids, mask = _pad_part(part, device)
            owners = torch.tensor([k - i for k, _, _ in part], device=device)
            w = torch.tensor(objective.weights_of(examples, [k for k, _, _ in part]), dtype=acc, device=device)
            factors: dict[str, list[Factor]] = {}
            losses = None
            if plan.coverage:
                checking = plan.needs_check
                cap_ = _capture(params, plan.coverage, checking, model, ids, mask, objective.sequence_loss, w)
                factors = group_examples(cap_.factors, owners, j - i, acc, low_precision_gemm=lowp_gemm)
                losses = cap_.losses
                if checking:
                    plan = cache.record(model, plan, verify_factors(factors, cap_.batch_grads or {}, rtol))
                    if plan.failed:
                        log.info("ghost kernels disagree with autograd for %s; using vmap for them", sorted(plan.failed))
                        factors = {n: f for n, f in factors.items() if n not in plan.failed}
            if plan.uncovered:
                dense, seq_losses = _dense_factors(model, params, plan.uncovered, ids, mask, objective.sequence_loss,
                                                   w, owners, j - i)
                factors.update(dense)
                losses = seq_losses if losses is None else losses
            assert losses is not None
            ex_losses = torch.zeros(j - i, dtype=acc, device=device).index_add_(0, owners, losses.to(acc) * w)
            bar.update(len(part))
            yield FactorBatch(list(range(i, j)), {n: factors[n] for n in params}, ex_losses)
