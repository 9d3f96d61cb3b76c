"""Target directions G: what "the model got better" means for an effect."""
