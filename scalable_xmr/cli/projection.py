"""``xmr projection create|show``."""

from __future__ import annotations

import argparse
import os

from scalable_xmr.errors import InputError
from scalable_xmr.store.projection import create_projection, describe_projection, save_projection


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("projection", help="create or inspect the fixed projection P (Arrow file)")
    psub = p.add_subparsers(dest="projection_command", metavar="ACTION", required=True)

    c = psub.add_parser("create", help="create P: first c columns of a seeded orthogonal matrix")
    c.add_argument("--dim", type=int, required=True, help="rows of P = common-space dimension d")
    c.add_argument("--classes", type=int, required=True, help="columns of P = number of classes c")
    c.add_argument("--seed", type=int, default=0, help="seed of the Gaussian matrix (default 0)")
    c.add_argument("--out", required=True, help="output Arrow IPC file (e.g. projection.arrow)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    c.set_defaults(func=_create)

    s = psub.add_parser("show", help="verify P (checksum, shape, orthonormality) and describe it")
    s.add_argument("file", help="projection Arrow file")
    s.set_defaults(func=_show)


def _create(args: argparse.Namespace) -> int:
    if os.path.exists(args.out) and not args.overwrite:
        raise InputError(f"{args.out}: already exists (pass --overwrite to replace it)")
    P = create_projection(args.dim, args.classes, args.seed)
    save_projection(args.out, P, seed=args.seed)
    print(describe_projection(args.out))
    return 0


def _show(args: argparse.Namespace) -> int:
    print(describe_projection(args.file))
    return 0
