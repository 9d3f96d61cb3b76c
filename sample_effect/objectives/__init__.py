"""Training objectives, defined once: the engine linearises these losses and the trainers minimise them."""
