"""``python -m hrsam.train``: see ``hrsam.train.cli``."""

import sys

from hrsam.train.cli import main

sys.exit(main())
