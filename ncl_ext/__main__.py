"""``python -m ncl_ext ...`` is ``ncl-ext ...``."""

import sys

from ncl_ext.cli import main

sys.exit(main())
