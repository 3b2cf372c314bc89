"""`python -m preprocess ...`: see preprocess/cli.py."""

from preprocess.cli import main

raise SystemExit(main())
