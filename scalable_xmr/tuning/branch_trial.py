"""The branch-model trial: one configuration of vse / mtfn / mmca / vsa, K swept without retraining.

The trial calls :func:`scalable_xmr.branch.member.train_branch`, the same function the
``train-pairs`` job's actors run, with ``out_dir`` = the trial's own directory. It reports every
epoch (loss, val R@K, ``best_rsum`` = the best validation rsum so far: the ASHA and selection
metric) with a Tune checkpoint every ``checkpoint_every`` epochs. After training, ``train_branch``
scores the selected model on val for the whole grid of re-ranking K (I2T) and (K, K') (T2I)
(MTFN-RR §3.2, ``branch.evaluate``): K never multiplies the trials. The last epoch is reported
only after that evaluation, with the chosen K / K' and their rsum, because Tune may end a trial as
soon as it has its last result.

A trial selects on validation only: it never reads the test split, so no test figure can reach
Tune, MLflow or the choice of the best trial. The sweep scores the configuration it chose on test
once, at its end (``tuning/final_score.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scalable_xmr.tuning.trial_io as trial_io
from scalable_xmr.branch.checkpoints import checkpoint_dir
from scalable_xmr.branch.config import PairTrainerConfig, split_values
from scalable_xmr.branch.member import BranchSpec, train_branch

KS = (1, 5, 10)


@dataclass(frozen=True)
class BranchTrialSetup:
    """Everything a branch trial needs besides its configuration."""

    sweep_dir: str
    dataset_uri: str
    model: str
    trainer_base: dict[str, Any] = field(default_factory=dict)  # PairTrainerConfig values (epochs ...)
    model_base: dict[str, Any] = field(default_factory=dict)  # the model config's fixed values
    ks: tuple[int, ...] | None = None  # None: branch.evaluate's default grid, cut to the gallery
    k_texts: tuple[int, ...] | None = None
    t2i_groups: str = BranchSpec.t2i_groups  # T2I re-ranking's neighbour groups (branch.evaluate)
    checkpoint_every: int = 1
    device: str = "auto"
    threads: int = 1


def split_config(model: str, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's sampled values as (trainer values, model-config values) (``branch.config``)."""
    return split_values(model, config, "trial config")


def _recalls(val: dict[str, float]) -> dict[str, float]:
    """``i2t@1`` -> ``i2t_1``: MLflow refuses "@" in metric names; same names as the train-pairs job."""
    return {k.replace("@", "_"): float(v) for k, v in val.items() if "@" in k}


class _Reporter:
    """Turns PairTrainer epoch records into Tune results; holds back the last epoch's."""

    def __init__(self, state: dict[str, Any], total: int, ckpt_dir: Path):
        self.best_rsum = float(state.get("best_rsum", float("nan")))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.total, self.ckpt_dir = total, ckpt_dir
        self.last: dict[str, Any] = {}

    def state(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "best_rsum": self.best_rsum, "train_seconds": self.train_seconds}

    def on_epoch(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"]) + 1
        self.train_seconds += float(record["seconds"])
        metrics: dict[str, Any] = {"epoch": epoch, "loss": float(record["loss"]), "lr": float(record["lr"]),
                                   "train_seconds": self.train_seconds}
        if "val_rsum" in record:  # image-text stage: the selection metric
            rsum = float(record["val_rsum"])
            metrics.update({"rsum": rsum, **_recalls(record["val"])})
            if math.isnan(self.best_rsum) or rsum > self.best_rsum:
                self.best_rsum = rsum
        elif "tt_r1" in record.get("val", {}):  # MTFN text-text stage (Eq. 7)
            metrics["tt_r1"] = float(record["val"]["tt_r1"])
        metrics["best_rsum"] = self.best_rsum
        self.last = metrics
        if record.get("last") or epoch >= self.total:  # the end (also when patience stopped it)
            return  # reported after the K evaluation
        if record.get("checkpointed"):
            trial_io.report(metrics, self.ckpt_dir, self.state(epoch))
        else:
            trial_io.report(metrics)

    def final(self, result) -> dict[str, Any]:
        """The last epoch's result plus the re-ranking choice on val (no test figure: see above)."""
        choice = result.choice
        i2t = next(r for r in result.grid["i2t"] if r["k"] == choice["k_i2t"])
        t2i = next(r for r in result.grid["t2i"]
                   if r["k"] == choice["k_t2i"] and r["k_text"] == choice["k_text"])
        out = {**self.last, "epoch": len(result.history)}
        if math.isnan(self.best_rsum):  # resumed after its last epoch: nothing was re-run
            self.best_rsum = float(result.val["rsum"])
        out.update({
            "best_rsum": self.best_rsum, "rsum_selected": float(result.val["rsum"]),
            "rsum_rerank": sum(float(i2t[f"i2t@{k}"]) + float(t2i[f"t2i@{k}"]) for k in KS),
            "best_k": int(choice["k_i2t"]), "best_k_t2i": int(choice["k_t2i"]),
            "best_k_text": int(choice["k_text"]), "train_seconds": self.train_seconds,
        })
        return out


def branch_trial(config: dict[str, Any], setup: BranchTrialSetup) -> None:
    """Tune function trainable: train ``setup.model`` with ``config``, then sweep K on val."""
    import time

    start = time.perf_counter()
    directory = trial_io.trial_dir(setup.sweep_dir, trial_io.current_trial_id())
    ckpt_dir = checkpoint_dir(directory)
    state = trial_io.install_tune_checkpoint(ckpt_dir) or {}
    trial_io.log_start(directory, state.get("epoch"))
    trainer_values, model_values = split_config(setup.model, config)
    trainer = PairTrainerConfig.from_dict({**setup.trainer_base, **trainer_values, "model": setup.model})
    job = BranchSpec(out_dir=str(directory), dataset_uri=setup.dataset_uri, trainer=trainer,
                    model_config={**setup.model_base, **model_values}, ks=setup.ks,
                    k_texts=setup.k_texts, t2i_groups=setup.t2i_groups,
                    checkpoint_every=setup.checkpoint_every,
                    device=setup.device, num_threads=setup.threads, save_sims=False, score_test=False)
    reporter = _Reporter(state, trainer.epochs + trainer.text_epochs, ckpt_dir)
    result = train_branch(job, on_epoch=reporter.on_epoch)
    final = reporter.final(result)
    final["trial_seconds"] = time.perf_counter() - start
    trial_io.report(final, ckpt_dir, reporter.state(final["epoch"]))
