"""Each real GRPO step's first-order change against the measured one (`validation.rl_steps`)."""

from __future__ import annotations

import pytest
from conftest import TRAIN

from sample_effect.engine.core import ComputeConfig
from sample_effect.errors import SampleEffectError
from sample_effect.models.loading import load_model
from sample_effect.plots.rl import step_decomposition_plot
from sample_effect.rollouts.prompts import RLPrompt
from sample_effect.training.common import adamw_update
from sample_effect.training.grpo import GRPOConfig
from sample_effect.validation.rl_accuracy import AccuracyCurveConfig, rl_accuracy_curve
from sample_effect.validation.rl_steps import grpo_step_decomposition


def long_completion(prompt, completion, answer, finished=True):
    return float(len(completion.strip()) >= 4)


PROMPTS = [RLPrompt(f"p{i}", r["prompt"], "") for i, r in enumerate(TRAIN[:4])]
HELD = [RLPrompt(f"h{i}", r["prompt"] + " again", "") for i, r in enumerate(TRAIN[:3])]
CFG = GRPOConfig(update=adamw_update(1e-3), steps=3, prompts_per_step=2, group_size=4, max_new_tokens=3, eval_every=1)
CURVE = AccuracyCurveConfig(eval_samples=4, target_samples=4, runs=1, noise_draws=4)


def test_steps_add_up_and_the_prediction_is_the_curves(model_dirs, tmp_path):
    def load():
        return load_model(model_dirs["gpt2"], "float32")

    df, s = grpo_step_decomposition("gpt2", load, PROMPTS, HELD, long_completion, CFG, CURVE, ComputeConfig(progress=False),
                                    line=(0.5, 1.0, 2.0))
    run, line = df[df["kind"] == "run"], df[df["kind"] == "line"]
    assert run["x"].tolist() == [0, 1, 2, 3] and line["x"].tolist() == [0.5, 1.0, 2.0]
    assert run["first_order"].iloc[0] == 0.0 and (run["step_norm"].iloc[1:] > 0).all()
    # Reweighting theta_0's own samples at theta_0 gives back the measured J_0, with every sample counting.
    assert run["accuracy_is"].iloc[0] == pytest.approx(run["accuracy"].iloc[0], rel=1e-12)
    assert run["ess"].iloc[0] == pytest.approx(1.0) and df["accuracy_is"].between(0, 1).all()
    # The per-step changes telescope: sum_k <theta_k - theta_{k-1}, G_0> = <theta_K - theta_0, G_0>.
    assert s["endpoint_first_order"] != 0.0
    assert s["path_first_order"] == pytest.approx(s["endpoint_first_order"], rel=1e-5, abs=1e-9)
    a1 = run["first_order"].iloc[1]
    # The predictor on the trainer's own first batch is that step's first-order change (the oracle on real weights).
    assert a1 != 0.0 and s["first_batch_predicted"] == pytest.approx(a1, rel=1e-5, abs=1e-12)
    assert line["first_order"].tolist() == pytest.approx([0.5 * a1, a1, 2 * a1])
    assert line["step_norm"].tolist() == pytest.approx([t * run["step_norm"].iloc[1] for t in (0.5, 1.0, 2.0)])
    assert s["actual_total_change"] == pytest.approx(run["accuracy"].iloc[-1] - run["accuracy"].iloc[0])
    assert run["predicted_change"].tolist() == pytest.approx([k * s["predicted_growth_per_step"] for k in range(4)])
    assert run["predicted_replay_change"].iloc[0] == 0.0
    assert run["predicted_replay_change"].iloc[-1] == pytest.approx(s["predicted_total_change_replay"])
    step_decomposition_plot(df, tmp_path / "steps.png")
    assert (tmp_path / "steps.png").stat().st_size > 0
    # Same seeds as the accuracy curve: the growth rate it predicts is the curve's, and so is the step-0 accuracy.
    _, c = rl_accuracy_curve("gpt2", load, PROMPTS, HELD, long_completion, CFG, CURVE, ComputeConfig(progress=False))
    assert s["predicted_growth_per_step"] == pytest.approx(c["predicted_growth_per_step"], rel=1e-6, abs=1e-12)
    assert s["predicted_total_change"] == pytest.approx(c["predicted_total_change"], rel=1e-6, abs=1e-12)
    assert s["predicted_total_change_replay"] == pytest.approx(c["predicted_total_change_replay"], rel=1e-6, abs=1e-12)
    assert s["start_accuracy"] == pytest.approx(c["start_accuracy"])
    assert s["actual_total_change"] == pytest.approx(c["actual_total_change"])


def test_line_points_are_checked(model_dirs):
    with pytest.raises(SampleEffectError, match="line points must be positive"):
        grpo_step_decomposition("gpt2", lambda: load_model(model_dirs["gpt2"], "float32"), PROMPTS, HELD,
                                long_completion, CFG, CURVE, line=(1.0, 0.0))


def test_importance_accuracy_against_a_loop(model_dirs):
    """Self-normalised reweighting of samples drawn at theta_0, against per-completion float64 log-probs."""
    import torch

    from sample_effect.rollouts.groups import sample_groups
    from sample_effect.validation.rl_steps import group_logprobs, importance_accuracy

    model, tok = load_model(model_dirs["gpt2"], "float64")
    def has_e(prompt, completion, answer, finished=True):
        return float("e" in completion)

    groups = sample_groups(model, tok, HELD, has_e, 6, 1.3, 4, seed=3, progress=False)
    assert any(len({r.reward for r in g}) == 2 for g in groups)  # mixed rewards: the weights move the estimate
    base = group_logprobs(model, groups, 1.3)
    plain = sum(r.reward for g in groups for r in g) / 18
    assert importance_accuracy(model, groups, base, 1.3) == pytest.approx((plain, 1.0), rel=1e-12)
    other, _ = load_model(model_dirs["gpt2"], "float64")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    est, ess = importance_accuracy(other, groups, base, 1.3)
    assert est != pytest.approx(plain, abs=1e-6) and ess < 1

    @torch.no_grad()
    def loop_lp(m, r):
        logits = m(input_ids=r.ids[None], use_cache=False).logits[0, :-1] / 1.3
        lp = torch.log_softmax(logits, -1).gather(1, r.ids[1:, None])[:, 0]
        return float(lp[r.start - 1:].sum())

    means, shares = [], []
    for g in groups:
        logw = torch.tensor([loop_lp(other, r) - loop_lp(model, r) for r in g], dtype=torch.float64)
        w = torch.exp(logw - logw.max())
        w = w / w.sum()
        means.append(float((w * torch.tensor([r.reward for r in g], dtype=torch.float64)).sum()))
        shares.append(float(1 / (len(g) * (w**2).sum())))
    assert est == pytest.approx(sum(means) / 3, rel=1e-9, abs=1e-12)
    assert ess == pytest.approx(sum(shares) / 3, rel=1e-9) and 0 < ess <= 1
