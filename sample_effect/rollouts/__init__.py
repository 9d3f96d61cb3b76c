"""Sampling from a policy and scoring its completions: generation and reward functions."""
