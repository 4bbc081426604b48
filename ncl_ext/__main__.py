"""``python -m ncl_ext ...`` is ``ncl-ext ...``."""

import sys

from ncl_ext.cli import main

if __name__ == "__main__":
    sys.exit(main())
