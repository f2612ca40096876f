"""Training of one image-text branch model (no Ray, no MLflow inside).

- :class:`PairTrainerConfig`: the typed training options (``branch/config.py``).
- :class:`PairTrainer`: the epoch loop with validation R@K, best-rsum model selection, early
  stopping per stage (``patience``), a callback per epoch and resumable checkpoints. MTFN's
  text-text branch trains after the image-text branch (``text_epochs``), initialised from its best
  state (MTFN-RR §4.1). An optional unpaired *target* split (VSA-AE-MMD §3.4) feeds the model's
  ``extra_loss`` with a random target batch beside every source batch.

The model registry is ``models/registry.py``; the chunked scoring ``branch/scoring.py``; the
text-text pairs and target batches a step draws ``branch/sampling.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.sampling import target_batch, target_tensors, text_pairs
from scalable_xmr.branch.scoring import (
    PairTensors,
    as_pair_tensors,
    nearest_text_recall,
    similarity_matrix,
    text_kind,
)
from scalable_xmr.config import patience_exhausted
from scalable_xmr.data.paired import PairedSplit
from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.functional.contrastive import hinge_max_violation, hinge_sum
from scalable_xmr.functional.retrieval import recall_at_k
from scalable_xmr.models.base import BranchModel
from scalable_xmr.models.registry import build_branch_model
from scalable_xmr.models.runtime import make_adam
from scalable_xmr.store import torchfile

__all__ = ["PairTrainer"]


# Version 2 leaves out what a resume does not read (see PairTrainer.state_dict); 1 held it all.
CHECKPOINT_FORMAT = "scalable_xmr.pair_trainer/2"
READABLE_FORMATS = ("scalable_xmr.pair_trainer/1", CHECKPOINT_FORMAT)
EpochCallback = Callable[[dict[str, Any]], None]


class PairTrainer:
    """Train one branch model on a paired split, selecting the epoch with the best val rsum.

    Data live as tensors on ``device``; a batch is an index into them (no host copies per step
    beyond the GRU's B packing lengths). An epoch visits every training caption once with its
    image (VSE++); pairs of the same image in a batch are not counted as negatives. With
    ``text_epochs > 0`` (MTFN) the text-text branch then trains for that many epochs, initialised
    from the best image-text state, on pairs of two captions of one image (MTFN-RR Eq. 7), and is
    selected by the val "nearest caption shares the image" rate (``tt_r1``).

    ``target_split`` (VSA-AE-MMD): an unpaired target-domain split in the training split's text
    kind and vocabulary; each training batch then passes ``target={"images", "tokens",
    "lengths"}`` of B random target images and B independently drawn target captions to the
    model's ``extra_loss`` (MMD and target reconstruction, VSA-AE-MMD Eq. 9-12).

    ``fit(on_epoch)`` calls ``on_epoch(record)`` after each epoch with ``self.epoch`` already
    advanced, so a checkpoint saved from the callback resumes at the next epoch.

    ``patience`` (config): a stage whose selection score has not improved for that many epochs
    ends there (``stopped_early[stage]`` = its last epoch, 1-based): ``self.epoch`` jumps to the
    stage's end, so an image-text stage that stops hands over to MTFN's text-text stage, whose own
    epochs and lr schedule are unchanged, and a member's last stage that stops ends its training.
    The record of that epoch says ``stopped_early`` and, when training ends with it, ``last``.
    """

    def __init__(
        self,
        config: PairTrainerConfig,
        model_config: Any,
        train_split: PairedSplit,
        val_split: PairedSplit | None = None,
        device: torch.device | str = "cpu",
        model: BranchModel | None = None,
        target_split: PairedSplit | None = None,
    ) -> None:
        if not isinstance(config, PairTrainerConfig):
            raise InputError(f"config: expected PairTrainerConfig, got {type(config).__name__}")
        self.config, self.device = config, torch.device(device)
        kind = text_kind(train_split, config.text_input)
        if val_split is not None:
            text_kind(val_split, kind)
            val_split.require_captions_per_image()
            if val_split.images.shape[1:] != train_split.images.shape[1:]:
                raise InputError(
                    f"val_split: image arrays {val_split.images.shape[1:]} differ "
                    f"from train {train_split.images.shape[1:]}"
                )
        torch.manual_seed(config.seed)  # model initialisation
        if model is None:
            model = build_branch_model(
                config.model,
                model_config,
                vocab_size=train_split.vocab_size or 2,  # dense text: a placeholder <pad>, <unk>
                image_dim=train_split.image_dim,
                text_dim=train_split.text_dim if kind == "features" else None,
            )
        self.model = model.to(self.device)
        # The loss's margin and hinge belong to the model's config (each model's paper sets them).
        self.margin, self.hinge = model.config.margin, model.config.hinge
        if config.text_epochs and not getattr(model, "has_text_branch", False):
            raise InputError(
                f"text_epochs={config.text_epochs}: model {config.model!r} has no "
                f"text-text branch (only mtfn)"
            )
        self.train_data = PairTensors.from_split(train_split, self.device, kind)
        self.val_data = None if val_split is None else PairTensors.from_split(val_split, self.device, kind)
        self.target_data = target_tensors(target_split, train_split, kind, self.device)
        self.total_epochs = config.epochs + config.text_epochs
        self.epoch, self.stage = 0, "image_text"
        self.optimizer = self._make_optimizer(self.stage)
        self.best: dict[str, dict[str, Any] | None] = {"image_text": None, "text_text": None}
        self.stopped_early: dict[str, int | None] = {"image_text": None, "text_text": None}
        self.history: list[dict[str, Any]] = []
        self._shuffle = torch.Generator().manual_seed(config.seed)

    # -- loop ------------------------------------------------------------------------------
    def fit(self, on_epoch: EpochCallback | None = None) -> list[dict[str, Any]]:
        """Train up to ``epochs + text_epochs``; returns the history (one record per epoch)."""
        while self.epoch < self.total_epochs:
            stage = "image_text" if self.epoch < self.config.epochs else "text_text"
            if stage != self.stage:
                self._begin_text_stage()
            lr = self._set_lr()
            start = time.perf_counter()
            loss = self._train_image_text() if stage == "image_text" else self._train_text_text()
            metrics, score = self._validate(stage)
            best = self.best[stage]
            improved = best is None or score > best["score"]
            if improved:
                self.best[stage] = {"score": score, "epoch": self.epoch, "model": self._stage_state(stage)}
            record = {
                "epoch": self.epoch,
                "stage": stage,
                "loss": loss,
                "lr": lr,
                "val_score": score,
                "val": metrics,
                "is_best": improved,
                "seconds": time.perf_counter() - start,
            }
            if stage == "image_text" and "rsum" in metrics:
                record["val_rsum"] = metrics["rsum"]
            self.epoch += 1
            self.history.append(record)
            if self._patience_exhausted(stage):
                self.stopped_early[stage] = self.epoch
                record["stopped_early"] = True
                self.epoch = self.config.epochs if stage == "image_text" else self.total_epochs
            record["last"] = self.epoch >= self.total_epochs
            if on_epoch is not None:
                on_epoch(record)
        self.restore_best()
        return self.history

    def _patience_exhausted(self, stage: str) -> bool:
        """config.patience_exhausted within ``stage``, before its last epoch (epochs 1-based)."""
        end = self.config.epochs if stage == "image_text" else self.total_epochs
        best = self.best[stage]
        return (self.epoch < end and best is not None
                and patience_exhausted(self.epoch, best["epoch"] + 1, self.config.patience))

    def restore_best(self) -> None:
        """Load the selected state: the best image-text parameters, then (when trained) the best
        text-text ones (the image-text ones were frozen at the best image-text state meanwhile)."""
        for stage in ("image_text", "text_text"):
            if self.best[stage] is not None:
                self._load_partial(self.best[stage]["model"])

    def _begin_text_stage(self) -> None:
        if self.best["image_text"] is not None:  # MTFN-RR §4.1: S_TT starts from the best S_IT
            self._load_partial(self.best["image_text"]["model"])
        self.model.init_text_branch()
        self.stage = "text_text"
        self.optimizer = self._make_optimizer(self.stage)

    def _stage_parameters(self, stage: str) -> list[torch.nn.Parameter]:
        if stage == "text_text":
            return self.model.text_branch_parameters()
        if hasattr(self.model, "image_text_parameters"):
            return self.model.image_text_parameters()
        return list(self.model.parameters())

    def _stage_keys(self, stage: str) -> set[str]:
        """State-dict keys of what ``stage`` trains, and every buffer. The rest of the model is,
        during the image-text stage, MTFN's S_TT branch (re-initialised from S_IT before it is
        used, MTFN-RR §4.1) and, during the text-text stage, the image-text branch (frozen at the
        best image-text state), so a checkpoint or a best state need not hold it."""
        trained = {id(p) for p in self._stage_parameters(stage)}
        keys = {name for name, p in self.model.named_parameters() if id(p) in trained}
        return keys | {name for name, _ in self.model.named_buffers()}

    def _stage_state(self, stage: str) -> dict[str, torch.Tensor]:
        """A CPU copy of the parameters ``stage`` trains (a best state)."""
        keys = self._stage_keys(stage)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items() if k in keys}

    def _load_partial(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load some of the model's tensors; a key the model does not have is an error."""
        unexpected = self.model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise InputError(f"state for model {self.config.model!r} has unknown keys {unexpected[:3]}")

    def _make_optimizer(self, stage: str) -> torch.optim.Optimizer:
        params = self._stage_parameters(stage)
        return make_adam(params, self.config.lr)  # fused: one kernel over all parameters

    def _set_lr(self) -> float:
        cfg = self.config
        stage_epoch = self.epoch if self.stage == "image_text" else self.epoch - cfg.epochs
        # the model's step decay (VSE++ / MTFN-RR); a sweep trial's compressed (branch.config.compressed)
        lr = cfg.lr_at(stage_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _loss(self, sim: torch.Tensor, **kw: Any) -> torch.Tensor:
        stage_epoch = self.epoch if self.stage == "image_text" else self.epoch - self.config.epochs
        warm = stage_epoch < self.config.warmup_sum_epochs
        fn = hinge_max_violation if self.hinge == "max" and not warm else hinge_sum
        return fn(sim, self.margin, **kw)

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()

    def _train_image_text(self) -> float:
        data, model, bs = self.train_data, self.model, self.config.batch_size
        model.train()
        perm = torch.randperm(data.n_captions, generator=self._shuffle).to(self.device)
        total, n_batches = torch.zeros((), device=self.device), 0
        for s in range(0, data.n_captions, bs):
            idx = perm[s : s + bs]  # (B,) captions
            if len(idx) < 2:
                continue
            total += self.train_step(idx)
            n_batches += 1
        return float(total) / max(n_batches, 1)

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One image-text optimiser step on training captions ``idx (B,)`` with their images;
        returns the batch's loss (detached, on the device: no host sync)."""
        data = self.train_data
        img_idx = data.caption_image_index[idx]  # (B,)
        images, texts, lengths = data.images[img_idx], data.texts[idx], data.lengths[idx]
        target = None
        if self.target_data is not None:  # VSA: B unpaired target images and captions
            target = target_batch(self.target_data, len(idx), self._shuffle, self.device)
        loss = self.batch_loss(images, texts, lengths, img_idx, target)
        self._step(loss)
        return loss.detach()

    def batch_loss(
        self,
        images: torch.Tensor,
        texts: torch.Tensor,
        lengths: torch.Tensor,
        img_idx: torch.Tensor,
        target: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Image-text loss of one batch of B captions with their images (``img_idx`` (B,): image
        ids, equal ids are not negatives): the hinge on ``model.similarity`` -- the training scores
        (MTFN: sigmoid, Eq. 5), never the ranking scores -- summed over the batch, plus
        ``model.extra_loss`` (VSA: its per-sample terms summed the same way, VSA-AE-MMD Eq. 11-12)."""
        model = self.model
        img_repr = model.encode_images(images)
        txt_repr = model.encode_texts(texts, lengths)
        sim = model.similarity(img_repr, txt_repr)  # (B, B), positives on the diagonal
        same_image = img_idx[:, None] == img_idx[None, :]  # (B, B) not negatives
        loss = self._loss(sim, ignore_mask=same_image)
        extra = {} if target is None else {"target": target}
        return loss + model.extra_loss(images, texts, lengths, img_repr, txt_repr, **extra)

    def _train_text_text(self) -> float:
        data, model, bs = self.train_data, self.model, self.config.batch_size
        model.train()
        a_idx, b_idx = text_pairs(self.train_data, self._shuffle, self.device)
        total, n_batches = torch.zeros((), device=self.device), 0
        for s in range(0, len(a_idx), bs):
            a, b = a_idx[s : s + bs], b_idx[s : s + bs]  # (B,) captions of B distinct images
            if len(a) < 2:
                continue
            txt_a = model.encode_texts_tt(data.texts[a], data.lengths[a])
            txt_b = model.encode_texts_tt(data.texts[b], data.lengths[b])
            sim = model.text_similarity(txt_a, txt_b)  # (B, B) S_TT, positives on the diagonal
            loss = self._loss(sim, bidirectional=False)  # MTFN-RR Eq. 7 (one direction)
            self._step(loss)
            total += loss.detach()
            n_batches += 1
        return float(total) / max(n_batches, 1)

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, split: PairedSplit | PairTensors | None = None) -> dict[str, float]:
        """VSE++ R@K (i2t@k, t2i@k, medr, meanr, rsum) on ``split`` (default: the val split)."""
        data = self.val_data if split is None else as_pair_tensors(split, self.model, self.device)
        if data is None:
            raise InputError("evaluate: no split given and the trainer has no val split")
        if data.captions_per_image is None:
            raise InputError("evaluate: R@K needs the same number of captions for every image")
        sim = similarity_matrix(self.model, data, self.config.eval_chunk)
        return {k: float(v) for k, v in recall_at_k(sim, data.captions_per_image).items()}

    def _validate(self, stage: str) -> tuple[dict[str, float], float]:
        if self.val_data is None:  # no selection: every epoch counts as the best so far
            return {}, float(self.epoch)
        if stage == "image_text":
            metrics = self.evaluate()
            return metrics, metrics["rsum"]
        r1 = nearest_text_recall(self.model, self.val_data, self.config.eval_chunk)
        return {"tt_r1": r1}, r1

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resume needs, once each: the parameters the current stage trains (MTFN's
        frozen or not-yet-initialised branch is left out, see :meth:`_stage_keys`), Adam's state
        of those, epoch, stage, the best states (``model: None`` where the best epoch is the one
        just trained: it equals ``model``), history and RNG."""
        rng = {"torch": torch.get_rng_state(), "shuffle": self._shuffle.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        keys = self._stage_keys(self.stage)
        if self.stage == "text_text" and self.best["image_text"] is None:  # no image-text epochs
            keys |= self._stage_keys("image_text")
        best = {}
        for stage, record in self.best.items():
            if record is not None and stage == self.stage and record["epoch"] == self.epoch - 1:
                record = {**record, "model": None}  # the model as it is now
            best[stage] = record
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.config),
            "epoch": self.epoch,
            "stage": self.stage,
            "model": {k: v for k, v in self.model.state_dict().items() if k in keys},
            "optimizer": self.optimizer.state_dict(),
            "best": best,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "rng": rng,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (model name must match); also reads the
        version-1 checkpoints that held every tensor of the model and of each best state."""
        saved = state.get("config", {}).get("model")
        if saved != self.config.model:
            raise InputError(f"checkpoint is for model {saved!r}, trainer is {self.config.model!r}")
        self.stage = state["stage"]
        best = dict(state["best"])
        stage_keys = self._stage_keys(self.stage)
        for stage, record in best.items():
            if record is not None and record["model"] is None:  # the best is the saved model
                own = {k: v for k, v in state["model"].items() if k in stage_keys}
                best[stage] = {**record, "model": own}
        if self.stage == "text_text" and best["image_text"] is not None:
            self._load_partial(best["image_text"]["model"])  # the frozen image-text branch
        self._load_partial(state["model"])
        self.optimizer = self._make_optimizer(self.stage)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best = int(state["epoch"]), best
        self.stopped_early = {**self.stopped_early, **state.get("stopped_early", {})}
        self.history = list(state["history"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self._shuffle.set_state(state["rng"]["shuffle"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` with a checksum, atomically, keeping the one before it."""
        torchfile.save_rotating(self.state_dict(), path)
        return Path(path)

    def load_checkpoint(self, path: str | os.PathLike) -> str | None:
        """Resume from :meth:`save_checkpoint`'s file, or the one before it when that is corrupt;
        returns why the newest was skipped (None when it was used)."""
        if not Path(path).is_file() and not torchfile.previous(path).is_file():
            raise MissingError(f"{path}: checkpoint not found")
        state, _, skipped = torchfile.load_newest_good(path)
        if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
            raise InputError(f"{path}: not a pair-trainer checkpoint")
        self.load_state_dict(state)
        return skipped
