"""``python -m serpytor`` is the ``serpytor`` command."""

import sys

from .cli import main

sys.exit(main())
