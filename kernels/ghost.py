"""Per-example gradients kept as factors: ghost inner products, ghost norms, one layer at a time.

For a Linear layer y = x W^T + b hit by one sequence, the gradient of that sequence's loss is
g_W = B^T A with A [T, in] the layer's inputs and B [T, out] the loss gradients at its outputs
(Goodfellow 2015; Li et al. 2021 "ghost clipping"; Bu et al. 2023 "book-keeping"). A, B for a
whole batch come out of ONE batched forward and backward (forward hooks keep the inputs, a
backward toward the layer outputs gives B, and the weight-gradient GEMMs are skipped), and then

    <g_W, G>  = sum((A G^T) * B)                      one GEMM per layer, no [E, out, in] tensor,
    ||g_W||^2 = sum((A A^T) * (B B^T))                the Gram ("ghost norm") form, T^2 (in + out),
    g_W       = B^T A (batched)                       when an elementwise optimiser needs it.

The same holds for GPT-2's Conv1D (g = A^T B), embeddings (A is the one-hot of the looked-up ids,
so contractions become gathers), biases (A = 1) and the elementwise weight of LayerNorm / RMSNorm
(g = sum_t B * xhat, xhat recomputed by calling the norm with unit weight). A parameter shared by
several modules (tied embeddings) carries one factor per use; its gradient is their sum and its
norm includes the cross terms. Every other parameter is handed back as "uncovered" so the caller
computes it with vmap; `verify_factors` compares the factor sums with autograd's batch gradient
once, so a layer used in an unforeseen way is caught instead of silently giving a wrong number.

The maths of each layer family lives in a `LayerRule` registered by module type
(`sample_effect.kernels.layers`); the functions here dispatch each factor to the rule of its kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .layers import Factor, lookup_layer_rule
from .layers.base import KIND_RULES

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_RULES = KIND_RULES  # kind -> LayerRule: the one dict lookup every dispatcher below does


def plan_coverage(
    model: torch.nn.Module, params: Mapping[str, torch.Tensor]
) -> tuple[dict[str, list[tuple[str, str, str]]], list[str]]:
    """Map each chosen parameter to the modules that use it: name -> [(module name, its param name, kind)].

    A parameter is covered only if every module that owns it has a rule; the rest are returned as
    uncovered (computed by vmap). Tied parameters are found by identity.
    """
    by_id = {id(p): n for n, p in params.items()}
    uses: dict[str, list[tuple[str, str, str]]] = {n: [] for n in params}
    bad: set[str] = set()
    for mname, module in model.named_modules():
        own = [(pname, by_id[id(p)]) for pname, p in module.named_parameters(recurse=False) if id(p) in by_id]
        if not own:
            continue
        rule = lookup_layer_rule(module)
        kinds = {} if rule is None else rule.param_kinds(module)
        for pname, name in own:
            kind = kinds.get(pname)
            if kind is None:
                bad.add(name)
            else:
                uses[name].append((mname, pname, kind))
    uncovered = [n for n in params if n in bad or not uses[n]]
    return {n: u for n, u in uses.items() if n not in uncovered}, uncovered


@dataclass
class Capture:
    """What one batched forward+backward leaves: per-sequence losses and factors per parameter."""

    losses: torch.Tensor
    factors: dict[str, list[Factor]]
    batch_grads: dict[str, torch.Tensor] | None = None


def capture_factors(
    model: torch.nn.Module,
    coverage: Mapping[str, list[tuple[str, str, str]]],
    input_ids: torch.Tensor,
    label_mask: torch.Tensor,
    loss_fn: LossFn,
    weights: torch.Tensor,
    params_for_check: Mapping[str, torch.Tensor] | None = None,
) -> Capture:
    """Run the batch once with hooks; return per-sequence losses and per-sequence factors (B scaled by `weights`).

    The backward is of sum_s weights[s] * loss_s toward the hooked modules' outputs only, so no
    weight gradient is formed unless `params_for_check` asks for the batch gradient as well.
    """
    modules = dict(model.named_modules())
    wanted: dict[str, list[tuple[str, str, str]]] = {}
    for name, uses in coverage.items():
        for mname, pname, kind in uses:
            wanted.setdefault(mname, []).append((name, pname, kind))
    records: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (module name, input, output) per call
    n_seq = input_ids.shape[0]

    def hook(mname: str):  # type: ignore[no-untyped-def]
        def fn(module, args, output):  # type: ignore[no-untyped-def]
            x = args[0]
            if output.shape[0] == 1 and n_seq > 1:
                # a batch-1 output broadcast over the batch (GPT-2's position embeddings): hand on an
                # expanded view instead, so the backward gives every sequence its own gradient; the
                # forward values are unchanged.
                output = output.expand(n_seq, *output.shape[1:])
                x = x.expand(n_seq, *x.shape[1:])
            records.append((mname, x, output))
            return output

        return fn

    handles = [modules[m].register_forward_hook(hook(m)) for m in wanted]
    try:
        with torch.enable_grad():
            logits = model(input_ids=input_ids, use_cache=False).logits
            losses = loss_fn(logits, input_ids, label_mask)
            total = (losses * weights.to(losses.dtype)).sum()
            outs = [o for _, _, o in records]
            check = list(params_for_check.values()) if params_for_check else []
            grads = torch.autograd.grad(total, outs + check, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    factors: dict[str, list[Factor]] = {n: [] for n in coverage}
    for (mname, x, out), gy in zip(records, grads[: len(outs)]):
        if gy is None:
            gy = torch.zeros_like(out)
        module = modules[mname]
        x = x.detach()
        for name, pname, kind in wanted[mname]:
            factors[name].append(_RULES[kind].capture(module, pname, x, gy))
    batch_grads = None
    if params_for_check:
        batch_grads = {
            n: (g if g is not None else torch.zeros_like(p))
            for (n, p), g in zip(params_for_check.items(), grads[len(outs) :])
        }
    return Capture(losses.detach(), factors, batch_grads)


def group_examples(
    factors: Mapping[str, list[Factor]], owners: torch.Tensor, n_examples: int, dtype: torch.dtype,
    low_precision_gemm: bool = False,
) -> dict[str, list[Factor]]:
    """Per-sequence factors -> per-example factors: an example's sequences become one row of slots.

    g(example) = sum of its (already weighted) sequences' gradients, so concatenating their token
    slots gives exactly that sum for every factor kind. Rows are zero-padded to the largest
    example; padded slots have B = 0 and contribute nothing. Tensors are cast to `dtype`, except,
    with `low_precision_gemm`, the factors of a `narrow` rule captured in a narrower dtype (a
    bfloat16 model's): they keep it, and it becomes their `gemm`.
    """
    counts = torch.bincount(owners, minlength=n_examples)
    r_max = int(counts.max())
    single = r_max == 1 and owners.shape[0] == n_examples and bool((owners == torch.arange(n_examples, device=owners.device)).all())
    slot = torch.zeros_like(owners)
    if not single:
        seen: dict[int, int] = {}
        for k, o in enumerate(owners.tolist()):
            slot[k] = seen.get(o, 0)
            seen[o] = int(slot[k]) + 1

    def regroup(t: torch.Tensor) -> torch.Tensor:
        if single:
            return t
        out = t.new_zeros((n_examples, r_max, *t.shape[1:]))
        out[owners, slot] = t
        return out.reshape(n_examples, r_max * t.shape[1], *t.shape[2:])

    grouped: dict[str, list[Factor]] = {}
    for name, fs in factors.items():
        grouped[name] = []
        for f in fs:
            rule = _RULES[f.kind]
            narrow = low_precision_gemm and rule.narrow and f.b.dtype.itemsize < dtype.itemsize
            gemm = f.b.dtype if narrow else None
            a, b = rule.flatten(f, f.b.dtype if narrow else dtype)
            grouped[name].append(Factor(f.kind, None if a is None else regroup(a), regroup(b), f.shape, gemm))
    return grouped


def factor_dot(f: Factor, g: torch.Tensor) -> torch.Tensor:
    """<g_e, G> for every example e of one factor, without forming g_e (one GEMM or gather).

    G goes to the rule in B's dtype (a narrow factor's bfloat16; pass it in that dtype already to
    save the cast on every call)."""
    return _RULES[f.kind].dot(f, g.to(f.b.dtype))


def materialise(f: Factor, rows: slice = slice(None)) -> torch.Tensor:
    """The per-example gradients [e, *shape] of the examples in `rows`."""
    return _RULES[f.kind].materialise(f, rows)


def _pair_gram(f1: Factor, f2: Factor) -> torch.Tensor | None:
    """<g1_e, g2_e> for every e from the factors alone, or None if this pair has no cheap form."""
    g = _RULES[f1.kind].gram(f1, f2)
    if g is None and f2.kind != f1.kind:
        g = _RULES[f2.kind].gram(f1, f2)
    return g


def gram_cost(f1: Factor, f2: Factor) -> float | None:
    """Multiply-adds of `_pair_gram(f1, f2)`, or None if it would fall back to materialising."""
    c = _RULES[f1.kind].gram_cost(f1, f2)
    if c is None and f2.kind != f1.kind:
        c = _RULES[f2.kind].gram_cost(f1, f2)
    return c


def materialise_cost(f: Factor) -> float:
    """Multiply-adds to form one example's gradient from this factor."""
    return _RULES[f.kind].materialise_cost(f)


def norm_method(fs: Sequence[Factor], force_gram: bool = False) -> str:
    """'gram' if every pair of a parameter's factors has a Gram form and it is cheaper (or forced), else 'materialise'."""
    costs = [gram_cost(f1, f2) for i, f1 in enumerate(fs) for f2 in fs[i:]]
    if any(c is None for c in costs):
        return "materialise"
    mat = sum(materialise_cost(f) for f in fs) + fs[0].numel()
    return "gram" if force_gram or sum(costs) < mat else "materialise"  # type: ignore[arg-type]


def sq_norms_gram(fs: Sequence[Factor]) -> torch.Tensor:
    """||sum_k g_k||^2 per example from pairwise Gram forms (cross terms counted twice)."""
    total = None
    for i, f1 in enumerate(fs):
        for j in range(i, len(fs)):
            g = _pair_gram(f1, fs[j])
            assert g is not None
            g = g if i == j else 2 * g
            total = g if total is None else total + g
    assert total is not None
    return total


def materialise_sum(fs: Sequence[Factor], rows: slice = slice(None), writable: bool = False) -> torch.Tensor:
    """The full per-example gradient (sum over the parameter's uses) for the examples in `rows`.

    A lone dense factor comes back as a view of its storage; `writable=True` returns a tensor the
    caller may overwrite in place (a copy only in that case).
    """
    out = materialise(fs[0], rows)
    for f in fs[1:]:
        out = out + materialise(f, rows)
    if writable and len(fs) == 1 and _RULES[fs[0].kind].returns_view:
        out = out.clone()
    return out


def factor_total(f: Factor) -> torch.Tensor:
    """Sum over examples of the per-example gradients: what autograd gives for the batch loss."""
    return _RULES[f.kind].total(f)


def verify_factors(
    factors: Mapping[str, list[Factor]], batch_grads: Mapping[str, torch.Tensor], rtol: float
) -> list[str]:
    """Names whose factor sums differ from autograd's batch gradient (relative to its norm) by more than rtol."""
    bad = []
    for name, fs in factors.items():
        ref = batch_grads[name].to(fs[0].b.dtype)
        got = sum(factor_total(f).reshape(ref.shape) for f in fs)
        scale = float(ref.norm()) + float(got.norm())  # type: ignore[union-attr]
        if float((got - ref).norm()) > rtol * max(scale, 1e-30):  # type: ignore[operator]
            bad.append(name)
    return bad
