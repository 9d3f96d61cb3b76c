"""What is written to disk and read back: the resumable scoring cache and the projected shards, both outputs of the one scoring path."""
