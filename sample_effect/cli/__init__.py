"""The command line: one module per command group; they parse arguments and call the library."""
