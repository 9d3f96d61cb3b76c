"""Recipes: whole pipelines built from the library, with their seeds and settings (the demo)."""
