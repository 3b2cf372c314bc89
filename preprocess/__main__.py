"""`python -m preprocess ...`: see preprocess/command.py."""

from preprocess.command import main

raise SystemExit(main())
