"""``python -m hrsam``: the ``hrsam`` command line (see ``hrsam.cli``)."""

import sys

from hrsam.cli import main

sys.exit(main(prog="python -m hrsam"))
