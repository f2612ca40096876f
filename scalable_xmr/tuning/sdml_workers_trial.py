"""The SDML trial with ``--workers-per-modality W > 1``: Ray Train inside the Tune trial.

Ray 2.60's way (Train V2; ``Tuner(trainer)`` is gone): the Tune trial function starts one
``TorchTrainer`` -- the modality's data-parallel training of sdml/data_parallel.py, W DDP ranks
that together give one process's result -- and waits for it; ``TuneReportCallback`` in the
*Train* run's callbacks hands each report of rank 0 to this trial, so Tune, its scheduler (ASHA)
and the sweep's MLflow callback (tuning/tracking.py, on the driver) see one result per epoch, with
the same keys as a single-worker trial (:func:`~scalable_xmr.tuning.sdml_trial.epoch_metrics`).

Each rank is a :class:`SweepRank`: the data-parallel rank, whose rank 0 also scores each epoch on
val against P's anchors (it holds the whole split) and, as the single-worker trial does, writes the
selected model whenever it changes (a scheduler may stop the trial) and the selected epoch's model
and val embeddings before its last report. The trial directory, its link to the sweep's P and its
start log are the single-worker trial's (:func:`~scalable_xmr.tuning.sdml_trial.start_trial_job`);
Ray Train keeps its run in the trial's ``checkpoints/`` folder, which the sweep drops when it has
finished (trial_io.drop_sweep_state).

Failures: the Train run is not restarted on its own (``max_failures=0``); Tune restarts the trial
(``--max-failures``), from its first epoch, as it restarts a single-worker trial that has no Tune
checkpoint: Tune's results and the model must describe the same epochs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import torch
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.placement_group import get_current_placement_group

import scalable_xmr.tuning.trial_io as trial_io
from scalable_xmr.sdml.data_parallel import RankContext, RankTrainer, run_modality_parallel
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.outputs import save_selected
from scalable_xmr.sdml.trainer import EpochStats
from scalable_xmr.tuning.sdml_trial import (
    SDMLTrialSetup,
    anchor_map,
    epoch_metrics,
    start_trial_job,
    trial_config,
)
from scalable_xmr.tuning.trial_workers import PLACEMENT_GROUP_KEY

VAL_CHUNK = 4096  # rows encoded at a time when rank 0 scores the val split


class SweepRank(RankTrainer):
    """A data-parallel trial's rank: reports the sweep's per-epoch scores (rank 0's are kept)."""

    def __init__(self, job: ModalitySpec, ctx: RankContext, save_each_selected: bool, started: float):
        self.save_each_selected, self.started = save_each_selected, started
        self.best_map, self.train_seconds = math.nan, 0.0
        self.last: dict[str, Any] = {}  # the last epoch's scores: they go with the final report
        super().__init__(job, ctx)

    @torch.no_grad()
    def val_embeddings_now(self) -> torch.Tensor:
        """This epoch's embeddings of the whole val split (rank 0 holds all of it), (n_val, d)."""
        self.model.eval()
        emb = torch.cat([self.model.encode_normalized(chunk) for chunk in self.x["val"].split(VAL_CHUNK)])
        self.model.train()
        return emb

    def scores(self, stats: EpochStats) -> dict[str, Any]:
        """Rank 0: the epoch scored on val against P's anchors, as a single-worker trial reports
        it; the selected model written when it changed (and a scheduler may stop the trial)."""
        self.train_seconds += stats.seconds
        val_emb = self.val_embeddings_now().cpu()
        val_map = anchor_map(val_emb, self.data.labels["val"].cpu(), self.P.cpu())
        if self.best_epoch == self.epoch:  # the selected model changed
            self.best_map = val_map
            if self.save_each_selected and not self.done:  # the last epoch writes it in run()
                save_selected(self.store, self.job, self.model, self.cfg, self.best_epoch, self.data,
                              {"val": val_emb})
        group = get_current_placement_group()  # released by the driver when Tune ends the trial
        return {**epoch_metrics(self, stats, val_map, self.best_map, self.train_seconds),
                "workers": self.world, **({PLACEMENT_GROUP_KEY: group.id.hex()} if group else {})}

    def report_epoch(self, stats: EpochStats, checkpointed: bool) -> None:
        """Every rank, every epoch but the last: ``report`` (a barrier) with rank 0's scores; the
        last epoch's scores wait for the outputs (:meth:`final_metrics`)."""
        metrics = self.scores(stats) if self.rank == 0 else {}
        if self.done:
            self.last = metrics
            return
        self.report(metrics)

    def final_metrics(self, seconds: float) -> dict[str, Any]:
        """The last epoch's scores, reported once its outputs are written (Tune may end the
        trial on this result)."""
        if self.rank != 0:
            return {}
        return {**self.last, "trial_seconds": time.time() - self.started}


def sweep_rank(job: ModalitySpec, ctx: RankContext, save_each_selected: bool, started: float) -> None:
    """What each of a trial's W Ray Train workers runs."""
    SweepRank(dataclasses.replace(job, device=ctx.device), ctx, save_each_selected, started).run()


def sdml_workers_trial(config: dict[str, Any], setup: SDMLTrialSetup) -> None:
    """Tune function trainable: train ``config["modality"]`` on ``setup.workers`` Ray Train
    workers, every epoch reported to this trial by ``TuneReportCallback``."""
    started = time.time()
    modality, cfg = trial_config(config, setup)
    directory = trial_io.trial_dir(setup.sweep_dir, trial_io.current_trial_id())
    job, _, _ = start_trial_job(setup, directory, modality, cfg)  # no Tune checkpoint: a new start
    per_worker = setup.resources_per_worker or {"CPU": 1.0}
    rank = functools.partial(sweep_rank, save_each_selected=setup.save_each_selected, started=started)
    run_modality_parallel(job, setup.workers, rank, use_gpu=per_worker.get("GPU", 0) > 0,
                          resources_per_worker=per_worker, max_failures=0,
                          callbacks=[TuneReportCallback()])
