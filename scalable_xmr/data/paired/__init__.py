"""Paired image-text datasets for the branch models (docs/data.md).

A paired dataset is a directory (or pyarrow.fs URI, read-only) holding

- ``images.parquet``: ``image_id: string, split: string`` and either
  ``features: fixed_size_list<float32>[dim]`` (one vector per image) or
  ``regions: fixed_size_list<fixed_size_list<float32>[dim]>[n_regions]`` (region features);
- ``captions.parquet``: ``caption_id: string, image_id: string, split: string`` and
  ``tokens: list<int32>`` (indices into ``vocab.json``; 0 is padding and never inside a caption)
  and/or ``features: fixed_size_list<float32>[dim]`` (a dense "text" vector, e.g. a second view
  of UCI mfeat); optionally ``text: string`` (the raw caption, for display only);
- ``vocab.json``: the token list (index 0 = "<pad>", 1 = "<unk>"), present when there are tokens.

:meth:`PairedDataset.read_split` returns the captions grouped by image (image i's captions are
consecutive), which is what the VSE++ R@K protocol (caption j -> image j // n) needs.

Modules: ``format`` (file names, special tokens, column conversions), ``dataset`` (reading),
``writer`` (writing), ``sources`` (:func:`convert_precomp` for SCAN/VSE++ "precomp" files,
:func:`make_synthetic_pairs`, :func:`mfeat_pairs`, with :func:`tokenize` and :func:`build_vocab`).
Their public names are re-exported here.
"""

from scalable_xmr.data.paired.dataset import (
    PairedDataset,
    PairedSplit,
    check_paired_dataset,
    inspect_paired_dataset,
    open_paired_dataset,
)
from scalable_xmr.data.paired.format import CAPTIONS_FILE, IMAGES_FILE, PAD, SPLITS, UNK, VOCAB_FILE
from scalable_xmr.data.paired.sources import (
    build_vocab,
    convert_precomp,
    make_synthetic_pairs,
    mfeat_pairs,
    tokenize,
)
from scalable_xmr.data.paired.writer import captions_table, images_table, write_paired_dataset

__all__ = [
    "CAPTIONS_FILE",
    "IMAGES_FILE",
    "PAD",
    "SPLITS",
    "UNK",
    "VOCAB_FILE",
    "PairedDataset",
    "PairedSplit",
    "build_vocab",
    "captions_table",
    "check_paired_dataset",
    "convert_precomp",
    "images_table",
    "inspect_paired_dataset",
    "make_synthetic_pairs",
    "mfeat_pairs",
    "open_paired_dataset",
    "tokenize",
    "write_paired_dataset",
]
