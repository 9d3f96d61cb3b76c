"""Simulated optimiser updates: the parameter change one step of SGD, Adam or AdamW would make, and optimiser states."""
