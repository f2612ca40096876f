"""Add a modality to a finished SDML run: `python jobs/add_modality.py --help`.

Thin on purpose: `ray submit cluster.yaml jobs/add_modality.py -- --run ... --modality 3d --data ...`
copies only this file to the head node, so it must import the installed package and nothing beside it.
"""

import sys

from scalable_xmr.cli.extend import main

if __name__ == "__main__":
    sys.exit(main())
