"""What is written to disk and read back: the resumable, content-addressed scoring cache."""
