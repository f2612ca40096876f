"""The batches a branch training step draws beside its shuffled captions (no model, no loss).

- :func:`text_pairs`: MTFN's text-text stage trains on two different captions of one image
  (MTFN-RR Eq. 7); one pair per image with >= 2 captions, images shuffled, each epoch.
- :func:`target_tensors` / :func:`target_batch`: VSA-AE-MMD's unpaired target domain (§3.4): the
  target split checked against the training split and put on the device, then per step B random
  target images and B independently drawn target captions (its pairing is never used).

Every draw takes the trainer's generator, so a resumed trainer draws what it would have drawn.
"""

from __future__ import annotations

import torch

from scalable_xmr.branch.scoring import PairTensors, text_kind
from scalable_xmr.data.paired import PairedSplit
from scalable_xmr.errors import InputError


def text_pairs(
    data: PairTensors, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different captions (a, b) of every image with >= 2 captions, images shuffled."""
    index = data.caption_image_index
    counts = torch.bincount(index, minlength=data.n_images)  # (N,)
    starts = torch.cumsum(counts, 0) - counts
    eligible = torch.nonzero(counts >= 2).squeeze(1)
    if len(eligible) < 2:
        raise InputError("text-text training needs >= 2 images with >= 2 captions each")
    order = torch.randperm(len(eligible), generator=generator).to(device)
    images = eligible[order]
    u = torch.rand(len(images), 2, generator=generator).to(device)
    c = counts[images]
    first = (u[:, 0] * c).long().clamp(max=c - 1)
    second = (first + 1 + (u[:, 1] * (c - 1)).long().clamp(max=c - 2)) % c
    return starts[images] + first, starts[images] + second


def target_tensors(
    target: PairedSplit | None, train: PairedSplit, kind: str, device: torch.device
) -> PairTensors | None:
    """The unpaired target split on the device, checked against the training split."""
    if target is None:
        return None
    text_kind(target, kind)
    if target.images.shape[1:] != train.images.shape[1:]:
        raise InputError(
            f"target_split: image arrays {target.images.shape[1:]} differ from train "
            f"{train.images.shape[1:]}"
        )
    if kind == "tokens" and target.vocab_size != train.vocab_size:
        raise InputError(
            f"target_split: vocabulary of {target.vocab_size} tokens differs from train's "
            f"{train.vocab_size}; map its tokens to the training vocabulary first"
        )
    if kind == "features" and target.text_dim != train.text_dim:
        raise InputError(
            f"target_split: caption features of width {target.text_dim}, train has {train.text_dim}"
        )
    return PairTensors.from_split(target, device, kind)


def target_batch(
    data: PairTensors, size: int, generator: torch.Generator, device: torch.device
) -> dict[str, torch.Tensor]:
    """Random target images and (independently drawn) target captions: the pairing of the
    target set is never used (VSA-AE-MMD §3.4, the target domain is unpaired)."""
    img = torch.randint(data.n_images, (size,), generator=generator).to(device)  # (B,)
    cap = torch.randint(data.n_captions, (size,), generator=generator).to(device)  # (B,)
    return {"images": data.images[img], "tokens": data.texts[cap], "lengths": data.lengths[cap]}
