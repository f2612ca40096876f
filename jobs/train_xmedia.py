"""SDML on XMedia-shaped data: `python jobs/train_xmedia.py --help`.

Thin on purpose: `ray submit cluster.yaml jobs/train_xmedia.py` copies only this file to the head
node, so it must import the installed package and nothing beside it.
"""

import sys

from scalable_xmr.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
