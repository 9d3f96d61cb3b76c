"""`python -m sample_effect` runs the CLI."""

from sample_effect.cli.main import main

raise SystemExit(main())
