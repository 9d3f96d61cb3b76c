"""Growth prediction: positive and noise effects of SFT and RL (GRPO) steps, per step of a schedule."""
