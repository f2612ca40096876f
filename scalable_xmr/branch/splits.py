"""The splits a branch member reads for itself, and the token remapping a target domain needs.

A member reads its own splits from the dataset path (no arrays travel through a driver). A VSA
member with a target domain (VSA-AE-MMD) also reads the target set, whose vocabulary is its own:
:func:`remap_tokens` turns its tokens into indices of the source vocabulary.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scalable_xmr.data.paired import UNK, PairedSplit, open_paired_dataset
from scalable_xmr.errors import InputError


def remap_tokens(split: PairedSplit, vocab: list[str], to_vocab: list[str]) -> PairedSplit:
    """``split``'s tokens (indices into ``vocab``) as indices into ``to_vocab``; words missing
    there become <unk>. Lets a target set with its own vocabulary feed the source model."""
    if split.tokens is None:
        return split
    index = {w: i for i, w in enumerate(to_vocab)}
    unk = index.get(UNK, 1)
    mapping = np.array([0] + [index.get(w, unk) for w in vocab[1:]], np.int64)  # 0 stays padding
    return dataclasses.replace(split, tokens=mapping[split.tokens], vocab_size=len(to_vocab))


def read_splits(
    dataset_uri: str, target_uri: str | None, score_test: bool
) -> tuple[dict[str, PairedSplit], dict[str, PairedSplit]]:
    """(source splits, target splits) a member uses.

    The source gives "train" and "val", and "test" when the member scores test (``score_test``).
    The target (VSA-AE-MMD, ``target_uri``) gives its "train" split, unpaired, to the MMD term
    and -- when the member scores test -- its "test" split (and "val" if present) to the
    target-domain R@K of ``member_scores.evaluate_target``; their tokens are remapped to the
    source vocabulary.
    """
    ds = open_paired_dataset(dataset_uri)
    present = ds.splits()
    for split in ("train", "val"):
        if split not in present:
            raise InputError(f"{dataset_uri}: no {split!r} split (has {present})")
    wanted = ("train", "val", "test") if score_test else ("train", "val")
    splits = {s: ds.read_split(s) for s in wanted if s in present}
    target: dict[str, PairedSplit] = {}
    if target_uri is not None:
        tds = open_paired_dataset(target_uri)
        required = ("train", "test") if score_test else ("train",)
        for split in required:
            if split not in tds.splits():
                raise InputError(f"--target {target_uri}: no {split!r} split (has {tds.splits()})")
        scored = ("test", "val") if score_test else ()
        for split in ("train", *(s for s in scored if s in tds.splits())):
            target[split] = tds.read_split(split)
            if ds.vocab is not None and tds.vocab is not None:
                target[split] = remap_tokens(target[split], tds.vocab, ds.vocab)
    return splits, target
