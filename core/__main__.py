"""``python -m core <command> [ARGS]``: the ``lesionlab`` command line where its script is not on PATH."""

import sys

from core.cli import main

if __name__ == "__main__":
    sys.exit(main())
