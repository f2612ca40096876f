"""Hyperparameter sweeps with Ray Tune: `python jobs/sweep.py --help`.

Thin on purpose: `ray submit cluster.yaml jobs/sweep.py -- --model mtfn` copies only this file to
the head node, so it must import the installed package and nothing beside it.
"""

import sys

from scalable_xmr.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
