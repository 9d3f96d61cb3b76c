"""Simulated optimiser updates: the registry of update rules (SGD, Adam, AdamW, Lion) and optimiser states.

Importing the package registers every rule: one module per optimiser family, each imported
below. A new optimiser is one module with a named `UpdateRule` subclass
(`sample_effect.update.rules`) plus its name on this import line.
"""

from sample_effect.update import adam, lion, sgd  # noqa: F401  (importing a rule's module registers it)
