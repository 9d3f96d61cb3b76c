"""The selection verdict: top-k against the distribution of random k-subsets."""

from __future__ import annotations

import pandas as pd
import pytest

from sample_effect.errors import SampleEffectError
from sample_effect.validation.selection import selection_sets, selection_verdict


def summary(top, randoms, bottom):
    rows = [{"selection": "top-4", "group": "top", "target_loss_end": top, "accuracy_end": 0.5}]
    rows += [{"selection": f"random-4 (seed {i})", "group": "random", "target_loss_end": v, "accuracy_end": 0.3}
             for i, v in enumerate(randoms)]
    rows.append({"selection": "bottom-4", "group": "bottom", "target_loss_end": bottom, "accuracy_end": 0.1})
    return pd.DataFrame(rows)


def test_verdict_separates_clear_and_unclear_wins():
    clear = selection_verdict(summary(1.0, [2.0, 2.1, 1.9, 2.05, 1.95], 3.0))
    assert clear["target_loss_end"]["top_beyond_prediction_interval"] and clear["verdict"].startswith("top-k beats random")
    lo, hi = clear["target_loss_end"]["random_mean_ci95"]
    assert lo < 2.0 < hi and clear["accuracy_end"]["top_better_than_every_random"]  # 0.5 vs 0.3 each
    assert clear["accuracy_end"]["top_z"] is None  # the random accuracies have no spread
    assert clear["verdict"].endswith("; top-k beats random on test accuracy: 0.5 lies outside the random runs' 95% "
                                     "prediction interval [0.3, 0.3]")
    close = selection_verdict(summary(1.85, [2.0, 2.1, 1.9, 2.05, 1.95], 3.0))
    assert close["target_loss_end"]["top_better_than_every_random"]
    assert not close["target_loss_end"]["top_beyond_prediction_interval"] and "suggestive" in close["verdict"]
    worse = selection_verdict(summary(2.2, [2.0, 2.1, 1.9, 2.05, 1.95], 3.0))
    assert "does not beat random on target loss" in worse["verdict"]
    loss_only = selection_verdict(summary(2.2, [2.0, 2.1, 1.9, 2.05, 1.95], 3.0).drop(columns="accuracy_end"))
    assert "test accuracy" not in loss_only["verdict"] and "does not beat random on target loss" in loss_only["verdict"]


def test_sets_are_seeded_and_checked():
    table = pd.DataFrame({"id": [f"e{i}" for i in range(10)]})
    a, b = selection_sets(table, 3, 5, seed=1), selection_sets(table, 3, 5, seed=1)
    assert a == b and a["top-3"] == ["e0", "e1", "e2"] and a["bottom-3"] == ["e7", "e8", "e9"] and len(a) == 7
    with pytest.raises(SampleEffectError):
        selection_sets(table, 11, 2)
    with pytest.raises(SampleEffectError):
        selection_verdict(summary(1.0, [2.0], 3.0))


def test_top_k_indices_mean_max_and_round_robin():
    import numpy as np

    from sample_effect.validation.selection import top_k_indices

    s = np.array([[5.0, 0.0], [4.0, 0.1], [3.0, 0.2], [0.0, 1.0], [-1.0, -1.0]])
    assert top_k_indices(s, 2, "mean").tolist() == [0, 1]  # means 2.5, 2.05, 1.6, 0.5, -1
    assert top_k_indices(s, 2, "max").tolist() == [0, 1]
    assert top_k_indices(s, 2, "round-robin").tolist() == [0, 3]  # column 1's best is example 3
    assert top_k_indices(s, 4, "round-robin").tolist() == [0, 3, 1, 2]
    assert top_k_indices(s, 1, "round-robin", largest=False).tolist() == [4]
    assert top_k_indices(s[:, 0], 3).tolist() == [0, 1, 2]  # one column: every aggregate is the plain ranking
    assert sorted(top_k_indices(s, 5, "round-robin").tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(SampleEffectError, match="aggregate"):
        top_k_indices(s, 2, "median")
    with pytest.raises(SampleEffectError, match="between 1"):
        top_k_indices(s, 6)
