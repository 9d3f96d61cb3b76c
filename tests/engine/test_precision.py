"""Lower precisions against the float64 engine on the same weights: the documented tolerances."""

from __future__ import annotations

import numpy as np
import pytest

from sample_effect import (
    ComputeConfig,
    LossTarget,
    UpdateConfig,
    load_examples,
    load_model,
    score_examples_result,
)
from sample_effect.data.examples import tokenize_examples

# Documented in docs/guide.md: relative to max |effect|.
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_float32_and_bfloat16_track_float64(model_dirs, data_files, arch):
    effects = {}
    for dtype in ("float64", "float32", "bfloat16"):
        model, tok = load_model(model_dirs[arch], dtype)
        target, _ = tokenize_examples(load_examples(data_files["target"]), tok)
        for opt in ("sgd", "adamw"):
            res = score_examples_result(
                model, tok, load_examples(data_files["train"]), LossTarget(target), UpdateConfig(opt, clip=1.0),
                compute=ComputeConfig(progress=False),
            )
            assert res.effect.dtype == np.float64 and np.all(np.isfinite(res.effect))
            effects[dtype, opt] = res.effect
    for dtype, tol in TOLERANCE.items():
        for opt in ("sgd", "adamw"):
            ref = effects["float64", opt]
            err = np.abs(effects[dtype, opt] - ref).max() / np.abs(ref).max()
            assert err <= tol, (dtype, opt, err)
