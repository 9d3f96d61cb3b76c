#!/usr/bin/env python
"""Task (a)'s LDS of effects taken at each point of the whole-pool run: the base, checkpoints 7, 14, 21 and the end.

Run after `scripts/lds_study.py` (it reads runs/lds/lds-m48-r2: the 96 cached retrains and the
trajectory run of `validate lds`). For each point, and for SGD and the trainer's AdamW (with the
AdamW state saved at that point; fresh at the base), it computes the [pool, target] effect matrix
in one engine pass, scores it on the same retrains and prints LDS [95%] and the mean-target
Spearman. The matrices go to runs/lds/checkpoints/.

    OMP_NUM_THREADS=1 python scripts/lds_checkpoints.py
"""
import glob
import json
import re
from pathlib import Path

import numpy as np
import torch

from sample_effect.data.examples import load_examples, tokenize_examples
from sample_effect.engine.core import ComputeConfig, example_loss_values
from sample_effect.models.loading import load_model, select_parameters
from sample_effect.models.registry import resolve_model
from sample_effect.scoring.effects import resolve_state
from sample_effect.scoring.matrix import compute_effect_matrix
from sample_effect.targets.core import LossTarget
from sample_effect.training.common import adamw_update
from sample_effect.update.optim import UpdateConfig
from sample_effect.validation.lds import LDSConfig, draw_subsets, lds_scores, summed_effects

traj = glob.glob('runs/lds/lds-m48-r2/cache/trajectory-*')[0]  # the validate lds run of scripts/lds_study.py
base = str(resolve_model('tiny'))
m, tok = load_model(base, 'float32', device='cpu')
pool = tokenize_examples(load_examples('runs/lds/data/pool.jsonl'), tok)[0]
tgt = tokenize_examples(load_examples('runs/lds/data/target.jsonl'), tok)[0]
L = np.zeros((48, 2, 16))
for f in glob.glob('runs/lds/lds-m48-r2/cache/retrain-*.json'):
    a, r = map(int, re.search(r'-m(\d+)-r(\d+)\.json', f).groups())
    L[a, r] = json.load(open(f))['losses']
with torch.no_grad():
    b = example_loss_values(m, tgt).numpy()
actual = b[None] - L.mean(1)
subs = draw_subsets(len(pool), LDSConfig(subsets=48, fraction=0.5, runs=2, seed=0))
OUT = Path('runs/lds/checkpoints')
OUT.mkdir(parents=True, exist_ok=True)
for name, path in [('base', base), ('7', traj + '/checkpoint-7'), ('14', traj + '/checkpoint-14'), ('21', traj + '/checkpoint-21'), ('final', traj + '/final')]:
    model, _ = load_model(path, 'float32', device='cpu')
    params = select_parameters(model)
    for rule in ['sgd', 'adamw']:
        upd = UpdateConfig('sgd', lr=2e-4) if rule == 'sgd' else adamw_update(2e-4, 1.0, 0.0)
        st = resolve_state(model, params, upd, path + '/optimizer.pt') if rule == 'adamw' and name != 'base' else None
        E = compute_effect_matrix(model, params, pool, [LossTarget([t]) for t in tgt], upd, st, ComputeConfig(progress=False))
        np.save(OUT / f'E_{name}_{rule}.npy', E)
        s = lds_scores(summed_effects(E, subs), actual, 500)
        print(name, rule, round(s['lds'], 3), [round(x, 3) for x in s['lds_ci95']], round(s['lds_mean_target'], 3), flush=True)
