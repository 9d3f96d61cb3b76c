"""`python -m sample_effect` runs the CLI."""

from .cli import main

raise SystemExit(main())
