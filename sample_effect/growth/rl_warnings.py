"""predict-rl's warnings: a batch larger than the prompts, and groups without reward variance.
"""

from __future__ import annotations

from sample_effect.errors import FieldText, field_text


class RLPredictionWarning(UserWarning):
    """A predict-rl setting or sample that makes the prediction uninformative (all-zero-variance groups, ...)."""


def prompts_per_step_warning(requested: int, n_prompts: int) -> FieldText | None:
    """The message for a `prompts_per_step` larger than the prompts given (None when it fits).

    A `FieldText` naming `RLPredictConfig.prompts_per_step` (the CLI renders it with its flag)."""
    if requested <= n_prompts:
        return None
    return field_text("RLPredictConfig", (
        f"predict-rl: <prompts_per_step> {requested} exceeds the {n_prompts} prompts given, so every simulated "
        f"GRPO step uses all {n_prompts} (prompts_per_step clamped to {n_prompts}) and there is no batch noise "
        f"to sample; pass more prompts, or <prompts_per_step> at most {n_prompts} (train-grpo's default is 8)"))


def zero_variance_warning(n_zero: int, n_prompts: int, group_size: int, temperature: float | None) -> FieldText | None:
    """The message when every group (or more than half) has zero reward variance (None otherwise).

    A `FieldText` naming `RLPredictConfig` fields (the CLI renders it with its flags)."""
    if n_prompts == 0 or n_zero * 2 <= n_prompts:
        return None
    temp = f" (now {temperature:g})" if temperature is not None else ""
    fix = (f"more rollouts per prompt (<group_size>, now {group_size}), a shaped reward such as <predict_rl.reward> kk-partial "
           f"instead of an all-or-nothing one, a higher <temperature>{temp}, easier prompts, or a stronger start "
           "(an SFT checkpoint that already solves some prompts)")
    if n_zero == n_prompts:
        return field_text("RLPredictConfig", (
            f"predict-rl: ALL {n_prompts} prompt groups have zero reward variance (every rollout of a prompt got "
            "the same reward), so GRPO would take no step: every effect, the growth rate and its interval are 0, "
            f"which says nothing about this checkpoint. To get a signal, use {fix}"))
    return field_text("RLPredictConfig", (
        f"predict-rl: {n_zero} of {n_prompts} prompt groups ({100 * n_zero / n_prompts:.0f}%) have zero reward "
        f"variance and carry no signal; the prediction rests on the other {n_prompts - n_zero}. For more "
        f"informative groups, try {fix}"))
