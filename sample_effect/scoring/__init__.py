"""Scoring: resolve a target, run the engine's Backend over examples and hand the rows to an output."""
