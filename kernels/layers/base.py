"""The LayerRule interface, the Factor it produces, and the registry that maps module types to rules.

A rule holds all the maths of one layer family's per-example gradient factors: which of a module's
own parameters it covers, how a factor is built from what the hooks captured, the ghost inner
product with a target, the per-example gradient, the pairwise Gram forms behind ghost norms, their
costs, and a shape-only factor for the planner. Rules are registered by module type, in the style
of Opacus' `register_grad_sampler`:

    @register_layer_rule(nn.Linear)
    class LinearRule(LayerRule):
        kind = "outer"
        ...

`lookup_layer_rule(module)` walks the module's MRO (so subclasses are found), then the registered
predicates; None means "no rule", and the engine computes that module's parameters with vmap.
Every factor carries its rule's `kind`; `rule_for_kind` finds the rule again with one dict lookup.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch

ModulePredicate = Callable[[torch.nn.Module], bool]


@dataclass
class Factor:
    """One use of a parameter by one module, for E examples over N token slots.

    kind: 'outer' g = B^T A (Linear weight [out, in]); 'outer_t' g = A^T B (Conv1D weight [in, out]);
    'embed' g[v] = sum over slots with ids == v of B (a: ids [E, N]); 'sum' g = sum_n B (bias);
    'scale' g = sum_n B * a (norm weight); 'dense' b is the gradient itself [E, *shape]. The kind
    names the registered `LayerRule` that knows the factor's maths (`rule_for_kind`).

    gemm: set for the factors of a bfloat16 / float16 model that a `narrow` rule keeps in that
    dtype (A and B as the model computed them, no cast): the rule's GEMMs run in it, and its dots,
    norms and formed gradients are accumulated and returned in float32. G is rounded to that dtype
    for the dot; the GEMM outputs and the elementwise products are rounded to it too.
    """

    kind: str
    a: torch.Tensor | None
    b: torch.Tensor
    shape: torch.Size
    gemm: torch.dtype | None = None

    def numel(self) -> int:
        """Number of elements of the parameter (of one example's gradient)."""
        return int(torch.Size(self.shape).numel())

    def slots(self) -> int:
        """N, the token slots the factors span per example (0 for a 'dense' gradient)."""
        return KIND_RULES[self.kind].slots(self)


def flat_slots(t: torch.Tensor) -> torch.Tensor:
    """[S, ..., k] -> [S, N, k]: every leading axis after the first is a token slot."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


class LayerRule(ABC):
    """The per-example gradient maths of one layer family; subclass, set `kind`, register.

    Factors hold A = `f.a` (what the module saw, per token slot) and B = `f.b` (the loss gradient
    at its output, already weighted per sequence); all methods take factors of this rule's kind.
    The pair methods (`gram`, `gram_cost`) take two factors of one parameter in the caller's order,
    at least one of them of this rule's kind, and return None for a pair they have no form for.
    """

    kind: ClassVar[str]  # the Factor.kind this rule's factors carry; unique across rules
    returns_view: ClassVar[bool] = False  # materialise() may return a view of the factor's storage
    # The rule's maths takes factors kept in a bfloat16 / float16 model's own dtype (`Factor.gemm`):
    # its GEMMs run in it and its results come back in float32. Other rules get float32 factors.
    narrow: ClassVar[bool] = False

    # -- coverage and capture -------------------------------------------------------------

    def param_kinds(self, module: torch.nn.Module) -> Mapping[str, str]:
        """The module's own parameters this family covers -> the factor kind each gets (others: vmap)."""
        return {"weight": self.kind}

    @abstractmethod
    def capture(self, module: torch.nn.Module, pname: str, x: torch.Tensor, gy: torch.Tensor) -> Factor:
        """The per-sequence factor of `module.<pname>` from the hooked input x and output gradient gy."""

    def flatten(self, f: Factor, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(a, b) as [S, N, k] token slots in `dtype`, ready to be regrouped per example."""
        a = None if f.a is None else flat_slots(f.a.to(dtype))
        return a, flat_slots(f.b.to(dtype))

    # -- per-example maths ----------------------------------------------------------------

    @abstractmethod
    def dot(self, f: Factor, g: torch.Tensor) -> torch.Tensor:
        """<g_e, G> for every example e, without forming g_e; G already has the factor's dtype."""

    @abstractmethod
    def materialise(self, f: Factor, rows: slice) -> torch.Tensor:
        """The per-example gradients [e, *shape] of the examples in `rows`."""

    @abstractmethod
    def total(self, f: Factor) -> torch.Tensor:
        """Sum over examples of the per-example gradients (what autograd gives for the batch loss)."""

    def gram(self, f1: Factor, f2: Factor) -> torch.Tensor | None:
        """<g1_e, g2_e> for every e from the factors alone, or None if this pair has no cheap form."""
        return None

    def sq_norms(self, f: Factor, rows: slice = slice(None)) -> torch.Tensor:
        """||g_e||^2 of this factor alone for the examples in `rows`, by materialising (Gram form: gram(f, f))."""
        return self.materialise(f, rows).flatten(1).pow(2).sum(1)

    # -- costs and planning -----------------------------------------------------------------

    def gram_cost(self, f1: Factor, f2: Factor) -> float | None:
        """Multiply-adds of `gram(f1, f2)`, or None if there is no Gram form for this pair."""
        return None

    def materialise_cost(self, f: Factor) -> float:
        """Multiply-adds to form one example's gradient from this factor."""
        return f.slots() * f.b.shape[-1]

    def slots(self, f: Factor) -> int:
        """N, the token slots the factor spans per example."""
        return int(f.b.shape[1])

    @abstractmethod
    def meta_factor(self, module: torch.nn.Module, pname: str, rows: int, slots: int) -> Factor:
        """A shape-only ('meta' device) factor of `rows` examples over `slots` slots, for the planner."""


class UnknownKindError(KeyError):
    """A factor kind no registered LayerRule carries."""

    def __str__(self) -> str:
        return f"no layer rule is registered for factor kind {self.args[0]!r}; known kinds: {', '.join(KIND_RULES)}"


class _KindTable(dict):
    """kind -> rule; a missing kind raises UnknownKindError (a plain lookup on the hot path otherwise)."""

    def __missing__(self, kind: str) -> LayerRule:
        raise UnknownKindError(kind)


KIND_RULES: dict[str, LayerRule] = _KindTable()
_BY_TYPE: dict[type, LayerRule] = {}
_BY_MATCH: list[tuple[ModulePredicate, LayerRule]] = []

R = TypeVar("R", bound=type[LayerRule])


def register_layer_rule(*module_types: type, match: ModulePredicate | None = None) -> Callable[[R], R]:
    """Class decorator: register one instance of a LayerRule for `module_types` (and subclasses).

    `match` adds a predicate, tried after every type, for modules recognised otherwise (a class
    name from a library not imported here). With neither, the rule is registered by kind only
    (factors it makes are dispatched to it, but no module maps to it). A kind or a module type
    that already has a rule raises ValueError; `unregister_layer_rule` removes one first.
    """

    def deco(cls: R) -> R:
        kind = cls.kind
        if kind in KIND_RULES:
            raise ValueError(f"factor kind {kind!r} already has the rule {type(KIND_RULES[kind]).__name__}")
        taken = [t.__name__ for t in module_types if t in _BY_TYPE]
        if taken:
            raise ValueError(f"module type(s) {', '.join(taken)} already have a layer rule")
        rule = cls()
        KIND_RULES[kind] = rule
        for t in module_types:
            _BY_TYPE[t] = rule
        if match is not None:
            _BY_MATCH.append((match, rule))
        return cls

    return deco


def unregister_layer_rule(cls: type[LayerRule]) -> None:
    """Remove a registered rule class from every table (for tests and for replacing a built-in rule)."""
    rule = KIND_RULES.get(cls.kind)
    if rule is None or type(rule) is not cls:
        raise ValueError(f"{cls.__name__} is not registered")
    del KIND_RULES[cls.kind]
    for t in [t for t, r in _BY_TYPE.items() if r is rule]:
        del _BY_TYPE[t]
    _BY_MATCH[:] = [(m, r) for m, r in _BY_MATCH if r is not rule]


def lookup_layer_rule(module: torch.nn.Module) -> LayerRule | None:
    """The rule for a module: by type along its MRO first, then the predicates in order; None if none.

    None is not an error: that module's parameters are left uncovered and computed with vmap.
    (Types before predicates: only a class both named like a transformers class and subclassing a
    registered torch type could resolve differently from the old if-chain, which tried Conv1D's name
    before nn.Embedding / nn.LayerNorm.)
    """
    for t in type(module).__mro__:
        rule = _BY_TYPE.get(t)
        if rule is not None:
            return rule
    for match, rule in _BY_MATCH:
        if match(module):
            return rule
    return None


def rule_for_kind(kind: str) -> LayerRule:
    """The registered rule whose factors carry `kind`; UnknownKindError (a KeyError) if none."""
    return KIND_RULES[kind]
