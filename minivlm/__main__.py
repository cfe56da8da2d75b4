"""`python -m minivlm ...`: the same command line as the `minivlm` console script."""

import sys

from .tools.cli import main

sys.exit(main())
