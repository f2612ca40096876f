"""``python -m scalable_xmr.cli``: the ``xmr`` command, for where the script is not on PATH."""

import sys

from scalable_xmr.cli import main

sys.exit(main())
