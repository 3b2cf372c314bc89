"""`python -m stockpredict.report`: the same as the `stockpredict-report` entry point."""

import sys

from stockpredict.report.command import main

sys.exit(main())
