"""Per-example directions and their effects: gradients under a memory budget, fast paths, planning, projections."""
