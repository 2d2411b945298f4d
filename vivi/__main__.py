"""``python -m vivi`` (and ``torchrun -m vivi``) runs the command line."""

import sys

from vivi.cli import main

sys.exit(main())
