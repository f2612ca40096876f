"""SDML-1, the joint baseline of paper Table 6: every modality network in one process, one loop.

All networks step together with one optimizer on the sum of their losses (Eq. 2 minimised jointly).
Each modality still sees each of its batches once per epoch, exactly as in the parallel strategy:
step s sums the losses of the modalities that still have an s-th batch, so the comparison with
SDML-2/3 differs only in how the work is scheduled, not in how many updates each network gets.
Adam is per-parameter, so one Adam over all networks equals one Adam per network; the parameter
groups keep each modality's own learning rate. With ``patience`` a modality stops on its own rule,
as in the parallel strategy: from its stop on it adds no loss (its network is left alone, it writes
its checkpoint of that epoch), and the loop ends when every modality is done.
"""

from __future__ import annotations

import time

import torch

from scalable_xmr.distributed.progress import Reporter
from scalable_xmr.models.runtime import make_adam
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.trainer import SDML_BETAS, EpochStats, ModalityTrainer, ProgressFn, TrainResult
from scalable_xmr.store import torchfile

JOINT_CHECKPOINT = "joint_checkpoint.pt"  # the shared optimizer's state, beside modalities/


class JointTrainer:
    def __init__(self, jobs: list[ModalitySpec], progress: ProgressFn | None = None):
        self.trainers = [ModalityTrainer(job, progress) for job in jobs]
        groups = [{"params": list(t.model.parameters()), "lr": t.optimizer.param_groups[0]["lr"]}
                  for t in self.trainers]
        self.optimizer = make_adam(groups, groups[0]["lr"], SDML_BETAS)
        self.path = self.trainers[0].store.root / JOINT_CHECKPOINT
        if self.path.is_file():
            state = torchfile.load(self.path, self.trainers[0].device)
            if all(t.epoch == state["epoch"] for t in self.trainers if not t.done):
                self.optimizer.load_state_dict(state["optimizer"])

    def train_epoch(self, trainers: list[ModalityTrainer]) -> list[EpochStats]:
        """One epoch of ``trainers`` (those not done) in one loop."""
        start = time.perf_counter()
        batches = [t.batches() for t in trainers]
        sums = [torch.zeros(3, device=t.device) for t in trainers]
        for step in range(max(len(b) for b in batches)):
            total = 0.0
            for i, trainer in enumerate(trainers):
                if step < len(batches[i]):
                    loss, recon, label = trainer.loss(*batches[i][step])
                    total = total + loss
                    sums[i] += torch.stack([loss.detach(), recon.detach(), label.detach()])
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
        seconds = time.perf_counter() - start
        stats = []
        for i, trainer in enumerate(trainers):
            trainer.epoch += 1
            means = (sums[i] / max(len(batches[i]), 1)).tolist()
            stats.append(EpochStats(trainer.epoch, *means, trainer.val_label_loss(), seconds))
        return stats

    def fit(self) -> dict[str, TrainResult]:
        start = time.perf_counter()
        cfg = self.trainers[0].cfg
        while active := [t for t in self.trainers if not t.done]:
            for trainer, stats in zip(active, self.train_epoch(active), strict=True):
                trainer.record(stats)
            epoch = active[0].epoch
            stopped = [t for t in active if t.done and t.epoch < cfg.epochs]  # patience ran out now
            if epoch == cfg.epochs or epoch % cfg.checkpoint_every == 0:
                for trainer in active:
                    trainer.save_checkpoint()
                torchfile.save({"epoch": epoch, "optimizer": self.optimizer.state_dict()}, self.path)
            else:
                for trainer in stopped:  # its last state, so a resume knows it is done
                    trainer.save_checkpoint()
        seconds = time.perf_counter() - start
        for trainer in self.trainers:
            trainer.write_outputs()
        return {t.job.modality: t.result(seconds) for t in self.trainers}


def train_joint(jobs: list[ModalitySpec], reporter: Reporter) -> dict[str, TrainResult]:
    """Every modality in one loop, as the one Ray actor of the joint strategy runs it."""
    return JointTrainer(jobs, reporter.progress).fit()
