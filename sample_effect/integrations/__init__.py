"""Hooks into other training libraries (imported lazily: each needs its own optional dependency).

- `sample_effect.integrations.trl.TargetChangeCallback`: a `transformers.TrainerCallback` for any HF
  `Trainer` (TRL's `SFTTrainer`, `GRPOTrainer`, ...) that logs, per optimiser step, the predicted
  and the actual change of a target loss.
"""
