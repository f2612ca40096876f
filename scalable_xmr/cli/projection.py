"""``xmr projection create|show``."""

from __future__ import annotations

import argparse
import os

from scalable_xmr.errors import InputError
from scalable_xmr.store.projection import create_projection, describe_projection, save_projection


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "projection", help="create or inspect the fixed projection P (Arrow file)",
        description="Create or inspect SDML's fixed projection P (d x c, orthonormal columns), the "
        "common space every modality is trained against. A training run creates its own P "
        "(projection.arrow in the run directory); these commands make or check one by hand.")
    psub = p.add_subparsers(dest="projection_command", metavar="ACTION", required=True)

    c = psub.add_parser(
        "create", help="create P: first c columns of a seeded orthogonal matrix",
        description="Create P: the first --classes columns of the orthogonal factor (QR, signs fixed) "
        "of a seeded --dim x --dim Gaussian matrix, written as an Arrow IPC file with its seed and "
        "sha256. The same seed always gives the same P.")
    c.add_argument("--dim", type=int, required=True, help="rows of P = common-space dimension d")
    c.add_argument("--classes", type=int, required=True, help="columns of P = number of classes c")
    c.add_argument("--seed", type=int, default=0, help="seed of the Gaussian matrix (default 0)")
    c.add_argument("--out", required=True, help="output Arrow IPC file (e.g. projection.arrow)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    c.set_defaults(func=_create)

    s = psub.add_parser(
        "show", help="verify P (checksum, shape, orthonormality) and describe it",
        description="Read a projection file, verify its sha256, shape and orthonormal columns, and "
        "print its shape, seed, method, sha256 and max |P^T P - I|.")
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
