"""Predicted vs actual change of a target loss, step by step, inside a TRL / transformers Trainer.

`TargetChangeCallback` is a `transformers.TrainerCallback`, so it works with any HF `Trainer`,
including TRL's `SFTTrainer` and `GRPOTrainer`. At every optimiser step (every `every`-th) it

1. in `on_pre_optimizer_step` (the gradients are accumulated over `gradient_accumulation_steps`
   and already clipped to `max_grad_norm` there) computes G = -grad of the mean SFT loss over the
   target examples at the current weights, and simulates the step the optimiser is about to take
   from its own state (the tensors its update rule keeps, e.g. Adam's moments, and the step count), with each
   parameter group's hyper-parameters and its current lr (the scheduler has already set it):
   predicted_change = sum over groups lr_g * <d_g, G_g>, d = delta_theta / lr
   (the registered update rule's `step`, `sample_effect.update.rules`);
2. in `on_optimizer_step` evaluates the target loss again and records
   actual_change = target_loss(before) - target_loss(after).

Both are *decreases* of the target loss (positive = the step helped), the sign convention of a
sample effect; they agree to first order in lr. Target losses are computed with the model in eval
mode (no dropout) and the trainer's mode restored; the trainer's `.grad`s and optimiser state are
only read. Rows go to `csv_path` (columns step, lr, predicted_change, actual_change, target_loss,
rewritten atomically at every log, save and at the end of training) and, summed over the
logging interval, into the trainer's logs under `{prefix}predicted_change`,
`{prefix}actual_change` and `{prefix}loss` (the loss after the latest step).

Not supported: DeepSpeed / FSDP (sharded parameters and optimiser state), fp16 with a gradient
scaler and `max_grad_norm=0` (the gradients are still scaled when the callback reads them),
optimisers without a registered update rule (torch's SGD without momentum, Adam, AdamW and this
package's `LionOptimizer` have one; e.g. 8-bit or Adafactor do not), AMSGrad.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from sample_effect.data.examples import TokenizedExample
from sample_effect.engine.core import ComputeConfig, example_loss_values, mean_loss_gradient
from sample_effect.errors import SampleEffectError
from sample_effect.io import atomic_open
from sample_effect.models.loading import accumulation_dtype
from sample_effect.targets.core import LossTarget, Target
from sample_effect.update.rules import (
    ParamHyper,
    ParamState,
    get_update_rule,
    rule_for_torch_optimizer,
)

CSV_COLUMNS = ("step", "lr", "predicted_change", "actual_change", "target_loss")

__all__ = ["CSV_COLUMNS", "TargetChangeCallback", "optimizer_kind", "predicted_change"]


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimiser inside accelerate's AcceleratedOptimizer (or any `.optimizer` wrapper)."""
    opt = optimizer
    while isinstance(getattr(opt, "optimizer", None), torch.optim.Optimizer):
        opt = opt.optimizer
    if not isinstance(opt, torch.optim.Optimizer):
        raise SampleEffectError(f"expected a torch optimizer, got {type(optimizer).__name__}")
    return opt


def optimizer_kind(optimizer: Any, group: Mapping[str, Any]) -> str:
    """The registered update rule ('sgd', 'adam', 'adamw', 'lion') a torch optimiser's parameter group steps with.

    Each rule recognises its own optimiser (`UpdateRule.recognises`); SampleEffectError when none does.
    """
    opt = _unwrap_optimizer(optimizer)
    name = type(opt).__name__
    if group.get("maximize", False):
        raise SampleEffectError(f"{name} with maximize=True is not supported")
    rule = rule_for_torch_optimizer(opt, group)
    if rule is not None:
        return rule.name
    raise SampleEffectError(
        f"optimizer {name} is not supported; use torch's AdamW / Adam / SGD (e.g. optim='adamw_torch')"
    )


def _float(x: Any) -> float:
    return float(x.item() if isinstance(x, torch.Tensor) else x)


def predicted_change(
    optimizer: Any, names: Mapping[int, str], target: Mapping[str, torch.Tensor]
) -> tuple[float, float]:
    """(sum over groups of lr_g * <d_g, G_g>, lr of the first group) for the step `optimizer` is about to take.

    Reads each parameter's current `.grad` (clipped, accumulated) and optimiser state; a parameter
    without a gradient is skipped, as torch skips it. `names` maps id(param) -> name of `target`.
    """
    opt = _unwrap_optimizer(optimizer)
    total = 0.0
    first_lr = None
    for group in opt.param_groups:
        rule = get_update_rule(optimizer_kind(opt, group))
        lr = _float(group["lr"])
        first_lr = lr if first_lr is None else first_lr
        betas = group.get("betas", rule.default_betas)
        hyper = ParamHyper(
            beta1=_float(betas[0]), beta2=_float(betas[1]), eps=_float(group.get("eps", 1e-8)),
            weight_decay=_float(group.get("weight_decay", 0.0)),
        )
        dot = 0.0
        for p in group["params"]:
            if p.grad is None:
                continue
            name = names.get(id(p))
            if name is None or name not in target:
                raise SampleEffectError(
                    "the optimizer steps a parameter the target does not cover "
                    f"({'unnamed' if name is None else repr(name)}); is it trainable (requires_grad)?"
                )
            acc = accumulation_dtype(p.dtype)
            st = opt.state.get(p, {})
            tensors = {k: st[k].detach().to(acc) for k in rule.state_keys if st.get(k) is not None}
            d = rule.step(
                p.grad.detach().to(acc), p.detach().to(acc), hyper, ParamState(_float(st.get("step", 0.0)), tensors)
            )
            dot += float((d * target[name].to(device=d.device, dtype=acc)).sum().double())
            del d
        total += lr * dot
    return total, (first_lr if first_lr is not None else float("nan"))


class TargetChangeCallback(TrainerCallback):
    """Log the predicted (first-order, from the engine) and actual change of a target loss per optimiser step.

    target: the target examples (`TokenizedExample`s, e.g. from `sample_effect.tokenize_examples`)
        or a `LossTarget`; their mean SFT loss (response tokens only) is the target loss.
    csv_path: where to write the rows (None: keep them only in `.rows` and the trainer's logs).
    every: measure every n-th optimiser step (the measurement costs a forward+backward over the
        target set and one more forward).
    prefix: key prefix in the trainer's logs.
    compute: `ComputeConfig` for the target gradient (progress bars are off by default).

    Pass it in `callbacks=[...]`, or call `cb.attach(trainer)` to put it first among the
    trainer's callbacks, so that reporting integrations (wandb, tensorboard, ...) see its keys.
    """

    def __init__(
        self,
        target: Sequence[TokenizedExample] | LossTarget,
        csv_path: str | os.PathLike | None = None,
        every: int = 1,
        prefix: str = "target_",
        compute: ComputeConfig | None = None,
    ) -> None:
        examples = target.hessian_examples() if isinstance(target, Target) else target
        if examples is None:
            raise SampleEffectError("the callback measures a target loss: pass a LossTarget or its examples")
        self.examples = list(examples)
        if not self.examples:
            raise SampleEffectError("the target set is empty")
        if not (isinstance(every, int) and every >= 1):
            raise SampleEffectError(f"every must be a positive integer, got {every!r}")
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.every = every
        self.prefix = prefix
        self.compute = compute or ComputeConfig(progress=False)
        self.rows: list[dict[str, float]] = []
        self._pending: dict[str, float] | None = None  # the step being measured
        self._unlogged: list[dict[str, float]] = []

    # -- plumbing ------------------------------------------------------------------------------

    def attach(self, trainer: Any) -> TargetChangeCallback:
        """Insert this callback first among `trainer`'s callbacks; returns self."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    @staticmethod
    def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not params:
            raise SampleEffectError("the model has no trainable parameters")
        return params

    def _target_loss(self, model: torch.nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return float(example_loss_values(model, self.examples, self.compute.batch_size).mean())
        finally:
            model.train(was_training)

    def write_csv(self) -> None:
        """Rewrite `csv_path` with every row so far (atomically); no-op without a path."""
        if self.csv_path is None:
            return
        with atomic_open(self.csv_path, "w") as f:
            w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
            w.writeheader()
            for row in self.rows:
                w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})

    # -- events --------------------------------------------------------------------------------

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._pending = None
        step = state.global_step + 1  # the step number the trainer logs after this step
        if model is None or optimizer is None or (step - 1) % self.every != 0:
            return
        params = self._trainable(model)
        names = {id(p): n for n, p in params.items()}
        was_training = model.training
        model.eval()
        try:
            grad, loss_before = mean_loss_gradient(model, params, self.examples, self.compute, desc="target")
        finally:
            model.train(was_training)
        target = {n: -g for n, g in grad.items()}
        del grad
        predicted, lr = predicted_change(optimizer, names, target)
        del target
        self._pending = {"step": step, "lr": lr, "predicted_change": predicted, "target_loss": float(loss_before)}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self._pending is None or model is None:
            return
        row, self._pending = self._pending, None
        after = self._target_loss(model)
        row["actual_change"] = row["target_loss"] - after
        row["target_loss_after"] = after
        self._unlogged.append(row)
        self.rows.append({k: row[k] for k in CSV_COLUMNS})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self._unlogged or any(k.startswith("eval_") for k in logs):
            return
        extra = {
            f"{self.prefix}predicted_change": math.fsum(r["predicted_change"] for r in self._unlogged),
            f"{self.prefix}actual_change": math.fsum(r["actual_change"] for r in self._unlogged),
            f"{self.prefix}loss": self._unlogged[-1]["target_loss_after"],
        }
        self._unlogged = []
        logs.update(extra)
        # Trainer.log appended a copy of `logs` to log_history before calling on_log
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
        if state.is_world_process_zero:
            self.write_csv()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write_csv()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write_csv()
