"""Loading causal LMs for exact per-example maths: local checkpoints, the shipped tiny models, SmolLM2, LoRA, float64."""
