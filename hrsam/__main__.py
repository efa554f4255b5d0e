"""``python -m hrsam``: see ``hrsam.cli``."""

import sys

from hrsam.cli import main

sys.exit(main())
