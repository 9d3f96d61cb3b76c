"""Running across processes (torchrun): rank, world size, gather and reduce; kept apart from the maths."""
