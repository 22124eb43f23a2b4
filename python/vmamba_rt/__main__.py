"""``python -m vmamba_rt``: the command line."""

import sys

from .cli import main

sys.exit(main())
