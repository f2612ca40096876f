"""Image-text branch models (VSE, MTFN, MMCA, VSA), R@K and re-ranking: `python jobs/train_pairs.py -h`.

Thin on purpose: `ray submit cluster.yaml jobs/train_pairs.py` copies only this file to the head
node, so it must import the installed package and nothing beside it.
"""

import sys

from scalable_xmr.cli.branch import main

if __name__ == "__main__":
    sys.exit(main())
