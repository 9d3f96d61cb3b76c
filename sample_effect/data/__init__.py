"""Training data: input formats, examples, tokenisation with a response-only loss mask, and the Knights-and-Knaves generator."""
