"""The branch-model half of a sweep, on the driver (tuning/backend.py says what a backend does)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from scalable_xmr.branch.config import (
    COMPRESSION_KEY,
    PairTrainerConfig,
    compressed,
    default_text_epochs,
    model_schedule,
    split_values,
)
from scalable_xmr.branch.evaluate import K_GRID, K_TEXT_GRID
from scalable_xmr.branch.member import BranchSpec
from scalable_xmr.data.paired import open_paired_dataset
from scalable_xmr.errors import InputError
from scalable_xmr.io import absolute_uri
from scalable_xmr.models.registry import branch_config
from scalable_xmr.tuning.backend import trial_resources
from scalable_xmr.tuning.branch_trial import BranchTrialSetup, branch_trial
from scalable_xmr.tuning.final_score import branch_summary, branch_test
from scalable_xmr.tuning.results import TrialRow
from scalable_xmr.tuning.space import SearchSpace
from scalable_xmr.tuning.trial_io import trial_dir

# A sweep that keeps branch.evaluate's default K grids lets each trial cut them to its gallery.
T2I_GROUPS = BranchSpec.t2i_groups  # the trials' T2I neighbour groups: train-pairs' default, "candidate"
# The training job's own, and the trials' compression: best.json trains the model's full schedule.
_NOT_IN_BEST = ("model", "epochs", "text_epochs", "seed", "eval_chunk", COMPRESSION_KEY)


def split_base(model: str, base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` values as (PairTrainerConfig values, model-config values) (``branch.config``);
    ``epochs`` is the sweep's own flag."""
    return split_values(model, base, "--set", exclude=("epochs",))


class BranchBackend:
    """One trial per configuration of one branch model; the best trial overall."""

    group_key = None
    metrics = {"rsum": ("best_rsum", "max")}
    default_metric = "rsum"
    table_extra = ("rsum_rerank", "best_k", "best_k_t2i", "best_k_text")
    complete_key = "rsum_rerank"  # only a trial that ran to its end has its K evaluation

    def __init__(self, model: str):
        self.model = model

    def check(self, req) -> None:
        """The paired dataset must hold a train and a val split."""
        ds = open_paired_dataset(req.dataset_uri)
        present = ds.splits()
        for split in ("train", "val"):
            if split not in present:
                raise InputError(f"--data {req.dataset_uri}: no {split!r} split (has {present})")

    def prepare(self, req, sweep_dir: Path, space: SearchSpace, checked: None = None) -> dict[str, Any]:
        trainer, model_values = split_base(self.model, req.base)
        trainer.setdefault("seed", req.seed)
        # MTFN: the text-text branch trains after, as in the train-pairs job
        trainer.setdefault("text_epochs", default_text_epochs(self.model, req.epochs))
        # A trial shorter than the model's schedule runs it compressed (branch.config.compressed):
        # its lr steps where the final training's fall, as fractions of training.
        cfg = compressed(PairTrainerConfig.from_dict({**trainer, "model": self.model}), req.epochs)
        branch_config(self.model, model_values)  # bad fixed values fail before any trial
        in_trial = space.in_trial()
        ks, k_texts = in_trial.get("k"), in_trial.get("k_text")
        return {"dataset": {"uri": absolute_uri(req.dataset_uri), "name": Path(str(req.dataset_uri)).name},
                "trainer_base": {k: v for k, v in asdict(cfg).items() if k != "model"},
                "model_base": model_values,
                "ks": None if ks in (None, K_GRID) else list(ks),
                "k_texts": None if k_texts in (None, K_TEXT_GRID) else list(k_texts),
                "t2i_groups": T2I_GROUPS,
                "max_iterations": cfg.epochs + cfg.text_epochs}

    def n_groups(self, info: dict[str, Any]) -> int:
        return 1

    def _trial_config(self, info: dict[str, Any]) -> PairTrainerConfig:
        """The trials' trainer config (sweeps before compression existed: not compressed)."""
        return PairTrainerConfig.from_dict({**info["trainer_base"], "model": self.model})

    def schedule(self, info: dict[str, Any]) -> str:
        """The lr schedule every trial runs (schedule keys are --set, never swept), e.g. ``lr ×0.1
        after 5 of 10 epochs (full schedule compressed: after 15 of 30 epochs)``."""
        return self._trial_config(info).describe_lr()

    def final_schedule(self, info: dict[str, Any]) -> str:
        """What ``xmr train-pairs --config best.json`` trains with no other flag: best.json holds
        no epochs, so the model's own, uncompressed (MTFN: and the default text-text epochs)."""
        epochs = model_schedule(self.model).epochs
        final = replace(self._trial_config(info), epochs=epochs, lr_schedule_epochs=0,
                        text_epochs=default_text_epochs(self.model, epochs))
        return final.describe_lr()

    def param_space(self, tuned: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        return dict(tuned)

    def trainable(self, info: dict[str, Any], sweep_dir: Path):
        from ray import tune

        setup = BranchTrialSetup(
            sweep_dir=str(sweep_dir), dataset_uri=info["dataset"]["uri"], model=self.model,
            trainer_base=info["trainer_base"], model_base=info["model_base"],
            ks=None if info["ks"] is None else tuple(info["ks"]),
            k_texts=None if info["k_texts"] is None else tuple(info["k_texts"]),
            t2i_groups=info.get("t2i_groups", T2I_GROUPS),
            device="auto" if info["gpus_per_trial"] > 0 else "cpu",
            threads=max(1, int(info["cpus_per_trial"])))
        return tune.with_resources(tune.with_parameters(branch_trial, setup=setup), trial_resources(info))

    def best_json(self, best: dict[Any, TrialRow], info: dict[str, Any], sweep_dir: Path,
                  tuned: list[str]) -> dict[str, Any]:
        """``{"model": m, "config": {...}}`` as ``train_pairs.py --config`` reads it.

        ``config`` holds the tuned values and the fixed ones the sweep trained with (not epochs:
        those are the training job's). K / K' are left out: the training job picks them on its
        own validation split after training (the trial's choice is under ``rerank``). ``test``:
        the chosen trial scored on test once, now (labelled ``final_score.TEST_LABEL``).
        """
        row = best[None]
        trainer = {k: v for k, v in info["trainer_base"].items()
                   if k not in _NOT_IN_BEST and v is not None}
        config = {**trainer, **info["model_base"], **{k: row.config[k] for k in tuned if k in row.config}}
        m = row.metrics
        return {"model": self.model, "config": config, "dataset": info["dataset"],
                "schedule": {"trials": self.schedule(info), "final": self.final_schedule(info)},
                "trial_id": row.trial_id, "trial_dir": str(trial_dir(sweep_dir, row.trial_id)),
                "val": {"rsum": m.get("best_rsum"), "rsum_selected": m.get("rsum_selected"),
                        **{k: m[k] for k in m if k.startswith(("i2t_", "t2i_")) and k[4:].isdigit()}},
                "rerank": {"k_i2t": m.get("best_k"), "k_t2i": m.get("best_k_t2i"),
                           "k_text": m.get("best_k_text"), "t2i_groups": info.get("t2i_groups", T2I_GROUPS),
                           "rsum": m.get("rsum_rerank"),
                           "rsum_plain": m.get("rsum_selected"), "split": "val"},
                "test": branch_test(row, info, sweep_dir)}

    @staticmethod
    def parent_metrics(best: dict[str, Any]) -> dict[str, float]:
        test = best["test"]
        out = {"rsum_best": best["val"]["rsum"], "rsum_rerank": best["rerank"]["rsum"],
               "rerank/k_i2t": best["rerank"]["k_i2t"], "rerank/k_t2i": best["rerank"]["k_t2i"],
               "rerank/k_text": best["rerank"]["k_text"],  # the above: val; below: test, scored once
               "test/rsum": test.get("plain", {}).get("rsum"),
               "test/rsum_rerank": test.get("rerank", {}).get("rsum")}
        return {k: float(v) for k, v in out.items() if isinstance(v, int | float)}

    @staticmethod
    def summary_line(best: dict[str, Any]) -> str:

        return branch_summary(best["test"])


def rerank_line(best: dict[str, Any]) -> str:
    """The best trial's re-ranking choice on val, as ``xmr sweep`` prints it; a best.json without
    ``t2i_groups`` had the sweep's default groups (:data:`T2I_GROUPS`)."""
    rerank = best["rerank"]
    return (f"re-ranking on the best trial (val): I2T K={rerank['k_i2t']}, T2I K={rerank['k_t2i']} "
            f"K'={rerank['k_text']} ({rerank.get('t2i_groups', T2I_GROUPS)} groups): "
            f"rsum {rerank['rsum']:.2f} (plain {rerank['rsum_plain']:.2f})")
