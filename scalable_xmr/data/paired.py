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

Reading lives in ``data/paired_dataset.py``, writing in ``data/paired_writer.py`` and the file
names and column conversions in ``data/paired_format.py``; their public names are re-exported here.
Sources live in ``data/paired_sources.py`` and are re-exported here: :func:`convert_precomp`
(SCAN/VSE++ "precomp" files), :func:`make_synthetic_pairs` (regions and captions from shared
latent concepts) and :func:`mfeat_pairs` (two views of UCI mfeat digits as image/"text" pairs, the
text side a dense vector), with :func:`tokenize` and :func:`build_vocab`.
"""

from __future__ import annotations

from typing import Any

from scalable_xmr.data.paired_dataset import (
    PairedDataset,
    PairedSplit,
    check_paired_dataset,
    open_paired_dataset,
)
from scalable_xmr.data.paired_format import CAPTIONS_FILE, IMAGES_FILE, PAD, UNK, VOCAB_FILE
from scalable_xmr.data.paired_format import SPLITS as SPLITS
from scalable_xmr.data.paired_writer import captions_table, images_table, write_paired_dataset

# Defined in paired_sources.py (which imports this module) and re-exported by __getattr__ below.
_SOURCES = ("convert_precomp", "make_synthetic_pairs", "mfeat_pairs", "tokenize", "build_vocab")

__all__ = [
    *_SOURCES,
    "PairedDataset",
    "PairedSplit",
    "open_paired_dataset",
    "write_paired_dataset",
    "images_table",
    "captions_table",
    "check_paired_dataset",
    "IMAGES_FILE",
    "CAPTIONS_FILE",
    "VOCAB_FILE",
    "PAD",
    "UNK",
]


def __getattr__(name: str) -> Any:
    """Re-export the sources of ``paired_sources`` lazily (that module imports this one)."""
    if name in _SOURCES:
        from scalable_xmr.data import paired_sources

        return getattr(paired_sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
