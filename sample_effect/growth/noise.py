"""Growth-rate terms of the SDE view (docs/theory.md, "Growth prediction"): positive effect and noise effect.

One optimiser step on a batch B of b examples moves a target objective T by, to second order,

    lr <E d, grad T> + (lr^2 / 2) E[ dbar_B^T H_T dbar_B ],   E[...] = dbar^T H dbar + tr(H_T Sigma) / b,

with d the per-example update per unit lr, H_T the Hessian of T and Sigma the covariance of d
over examples. The first term is the positive effect lr * E(D); the noise effect is
(lr^2 / 2b) tr(H_T Sigma). For a loss target T = -L_target, so H_T = -H_L; for a fixed direction
T is linear and its noise effect is zero.

This module estimates tr(H_T Sigma) = E_i[(d_i - dbar)^T H_T (d_i - dbar)] * n / (n - 1) with one
Hessian-vector product (forward-over-reverse, `torch.func.jvp` of `torch.func.grad`) per centred
per-example update, for SGD (optionally clipped). A trainer that draws a batch of b out of n
examples without replacement sees Cov(dbar_B) = (Sigma / b) (n - b) / n (Sigma with divisor
n - 1), so the exact per-step term carries the finite-population factor (n - b) / n
(`NoiseEffect.per_step(lr, b, population=n)`); it vanishes when the batch is the whole dataset.

`SpilledRows` keeps dense per-example tensors (one dict over parameters per example) in an
anonymous temporary file and reads them back one at a time, so a term that needs every
example's gradient holds one of them in memory, not n (docs/scaling.md, "predict-rl memory").
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad, jvp

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import (
    ComputeConfig,
    collate,
    iter_example_gradients,
    split_parameters,
)
from sample_effect.errors import SampleEffectError
from sample_effect.growth.rows import LazyRows
from sample_effect.growth.trajectory import StepContext
from sample_effect.objectives.losses import sft_sequence_loss
from sample_effect.update.optim import UpdateConfig, clip_coefficients


@dataclass
class NoiseEffect:
    """tr(H_T Sigma) with its standard error, and the per-step noise effect for (lr, batch size)."""

    trace: float
    stderr: float
    n: int

    def per_step(self, lr: float, batch_size: float, population: float | None = None) -> float:
        """(lr^2 / 2b) tr(H_T Sigma): the expected per-step change of T caused by gradient noise.

        With `population` n, batches are drawn without replacement from n examples and the
        factor (n - b) / n makes the term exact for a quadratic T (0 when b >= n).
        """
        return lr * lr / (2 * batch_size) * self.trace * finite_population(batch_size, population)


def finite_population(batch_size: float, population: float | None) -> float:
    """(n - b) / n, the variance factor of a mean over b draws without replacement from n (1 for n = None)."""
    if population is None:
        return 1.0
    return max(0.0, (population - batch_size) / population) if population > 0 else 0.0


class SpilledRows(LazyRows):
    """Rows of dense tensors (a dict over parameter names each) on disk, read back one row at a time.

    `append` writes a row's bytes to an anonymous temporary file in `directory` (the system's
    temporary directory by default; the file is gone when the object is closed or collected);
    `rows[i]` reads row i back into fresh tensors on the device it came from, bit for bit. Every
    row has the first row's names, shapes, dtypes and devices. Resident memory: one row while it
    is read or written, whatever the number of rows (the bytes sit in the OS page cache, which
    the kernel reclaims under pressure; on a tmpfs directory they are RAM).
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)
        self._layout: list[tuple[str, torch.Size, torch.dtype, torch.device, int]] = []
        self._row_bytes = 0
        self._n = 0

    def append(self, row: Mapping[str, torch.Tensor]) -> None:
        """Write one row (its tensors are copied to the file; the caller may drop them)."""
        if not self._layout:
            self._layout = [(k, t.shape, t.dtype, t.device, t.numel() * t.element_size()) for k, t in row.items()]
            self._row_bytes = sum(b for *_, b in self._layout)
        if list(row) != [k for k, *_ in self._layout]:
            raise SampleEffectError("every spilled row must hold the same parameters in the same order")
        self._file.seek(self._n * self._row_bytes)
        for k, shape, dtype, _, _ in self._layout:
            t = row[k].detach()
            if t.shape != shape or t.dtype != dtype:
                raise SampleEffectError(f"spilled row {self._n}: '{k}' is {tuple(t.shape)} {t.dtype}, expected "
                                        f"{tuple(shape)} {dtype}")
            self._file.write(memoryview(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def row(self, i: int) -> dict[str, torch.Tensor]:
        """Row i read back from the file, bit for bit (IndexError outside the rows written)."""
        if not -self._n <= i < self._n:
            raise IndexError(f"row {i} of {self._n}")
        self._file.seek((i % self._n) * self._row_bytes)
        out = {}
        for k, shape, dtype, device, nbytes in self._layout:
            buf = torch.empty(nbytes, dtype=torch.uint8)
            if self._file.readinto(memoryview(buf.numpy())) != nbytes:
                raise SampleEffectError(f"spilled row {i} is truncated on disk")
            out[k] = buf.view(dtype).view(shape).to(device)
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return (self[i] for i in range(self._n))

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return self._n * self._row_bytes

    def close(self) -> None:
        """Delete the file (the rows are gone)."""
        self._file.close()
        self._n = 0


class CentredRows(LazyRows):
    """a_i (u_i - ubar) for the i-th row of `ups`, formed when read, so one centred row is held at a time."""

    def __init__(self, ups: Sequence[Mapping[str, torch.Tensor]], scale: list[float], dbar: Mapping[str, torch.Tensor]) -> None:
        self.ups, self.scale, self.dbar = ups, scale, dbar

    def __len__(self) -> int:
        return len(self.ups)

    def row(self, i: int) -> dict[str, torch.Tensor]:
        """a_i (u_i - ubar)."""
        u = self.ups[i]
        return {nm: self.scale[i] * (u[nm] - d) for nm, d in self.dbar.items()}


def spill_space_note(need: int, directory: str | os.PathLike | None = None) -> str | None:
    """Why `need` bytes of spilled rows do not fit the free space of `directory` (None when they fit)."""
    where = str(directory or tempfile.gettempdir())
    try:
        free = shutil.disk_usage(where).free
    except OSError as e:
        return f"skipped: the spill directory {where} is not usable ({e})"
    if need > free:
        return (f"skipped: the noise terms spill one gradient per prompt to disk (about {need / 1e9:.3g} GB), more "
                f"than the {free / 1e9:.3g} GB free in {where}; pass fewer prompts, a parameter subset (params) or a "
                "spill_dir with room")
    return None


HVP = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]


def loss_hvp(loss: Callable[[Mapping[str, torch.Tensor]], torch.Tensor], params: Mapping[str, torch.Tensor]) -> HVP:
    """v -> H v for a scalar function of named parameters, by forward-over-reverse (jvp of grad) at `params`."""
    primal = {n: p.detach() for n, p in params.items()}

    def hvp(v: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tangent = {n: v[n].to(primal[n].dtype) for n in primal}
        return jvp(grad(loss), (primal,), (tangent,))[1]

    return hvp


def trace_from_centred(centred: Sequence[Mapping[str, torch.Tensor]], hvp: HVP, sign: float = -1.0) -> NoiseEffect:
    """tr(H_T Sigma) = sum_i c_i^T H_T c_i / (n - 1) over centred updates c_i, with H_T = sign * (hvp's Hessian).

    sign -1: `hvp` is the Hessian of a loss L and T = -L. The standard error is over the n terms.
    Under torchrun every rank must call it with the same updates: each takes its block of the
    Hessian-vector products and the terms are gathered.
    """
    from sample_effect.runtime import distributed as dist

    n = len(centred)
    if n < 2:
        raise SampleEffectError("the noise effect needs at least 2 centred updates")
    mine = dist.block(n) if dist.active() else range(n)
    local = {}
    for i in mine:
        c = centred[i]
        hc = hvp(c)
        local[i] = sign * float(sum((c[k].double() * hc[k].double()).sum() for k in c))
    quads = dist.gather_blocks(n, local) if dist.active() else [local[i] for i in range(n)]
    q = torch.tensor(quads, dtype=torch.float64)
    trace = float(q.sum() / (n - 1))
    stderr = float(q.std(unbiased=True) * n / (n - 1) / n**0.5) if n > 2 else float("nan")
    return NoiseEffect(trace=trace, stderr=stderr, n=n)


def target_loss_hvp(
    model: torch.nn.Module, params: Mapping[str, torch.Tensor], target: Sequence[TokenizedExample]
) -> HVP:
    """A function v -> H_L v, the Hessian of the mean target loss times v (all target sequences in one batch)."""
    consts = split_parameters(model, params)
    ids, mask, owners = collate(target, next(iter(params.values())).device)
    w = torch.tensor([1.0 / (target[i].n_responses * len(target)) for i in owners.tolist()], device=ids.device)

    def loss(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = functional_call(model, {**consts, **p}, args=(), kwargs={"input_ids": ids, "use_cache": False}).logits
        seq = sft_sequence_loss(logits, ids, mask)
        return (seq * w.to(seq.dtype)).sum()

    return loss_hvp(loss, params)


def noise_effect_loss_target(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Sequence[TokenizedExample],
    target: Sequence[TokenizedExample],
    update: UpdateConfig,
    compute: ComputeConfig | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> NoiseEffect:
    """tr(H_T Sigma) for T = -(mean target loss) and per-example SGD updates (clipping honoured).

    The per-example updates are spilled to a temporary file in `spill_dir` (`SpilledRows`) as
    they are computed, summed for the mean on the way, and centred one at a time when their
    Hessian-vector product needs them (`CentredRows`): resident memory is a few dense copies of
    the parameters (the running sum, one update, its centred form and H c), whatever the number of
    examples. Before, all n updates and their n centred copies were held at once.
    """
    update.validate()
    if not update.rule.is_linear:
        raise SampleEffectError("the Hessian noise-effect estimator covers SGD; Adam needs the Monte Carlo estimator")
    if len(examples) < 2:
        raise SampleEffectError("the noise effect needs at least 2 examples")
    ctx = StepContext.build(params, update)
    names = ctx.names
    rows = SpilledRows(spill_dir)
    try:
        total: dict[str, torch.Tensor] = {}
        for batch in iter_example_gradients(model, params, examples, compute):
            sq = sum((g.flatten(1) ** 2).sum(1) for g in batch.grads.values())
            coef = clip_coefficients(sq, update.clip)
            d = {
                n: update.rule.step(g * coef.view(-1, *([1] * (g.dim() - 1))), params[n].detach().to(g.dtype),
                                    ctx.hypers[n], ctx.state.param_state(n))
                for n, g in batch.grads.items()
            }
            for k in range(len(batch.indices)):
                row = {n: d[n][k] for n in names}
                rows.append(row)
                for n in names:
                    total[n] = total[n] + row[n] if n in total else row[n].clone()
            del d, batch
        n_rows = len(rows)
        mean = {k: total[k] / n_rows for k in names}
        del total
        centred = CentredRows(rows, [1.0] * n_rows, mean)
        return trace_from_centred(centred, target_loss_hvp(model, params, target), sign=-1.0)  # H_T = -H_L
    finally:
        rows.close()
