"""Checks of the first-order picture against real training: linearisation, curves, selection, RL curves."""
