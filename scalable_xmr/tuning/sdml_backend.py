"""The SDML half of a sweep, on the driver (tuning/backend.py says what a backend does): prepare
the sweep directory and its one P, build the per-modality Tune trainable with its resources, and
turn the best trial of every modality into ``best.json``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from scalable_xmr.config import SDMLConfig, from_dict
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.errors import InputError
from scalable_xmr.io import absolute_uri
from scalable_xmr.store.projection import create_projection, save_projection
from scalable_xmr.tuning.backend import trial_resources
from scalable_xmr.tuning.final_score import sdml_summary, sdml_test
from scalable_xmr.tuning.population_trial import populations, sdml_population_trial
from scalable_xmr.tuning.results import MEMBERS_KEY, TrialRow
from scalable_xmr.tuning.sdml_trial import SDMLTrialSetup, sdml_trial
from scalable_xmr.tuning.trial_io import trial_dir

SMALL_INPUT_DIM = 1024  # below: a "small" modality, packed onto a share of a GPU
SMALL_GPU_SHARE = 0.25  # a small modality's trial takes this share of --gpus-per-trial
FULL_EPOCHS = next(f.default for f in fields(SDMLConfig) if f.name == "epochs")  # xmr train's: 200


def sdml_schedule(epochs: int) -> str:
    """How much of SDML's training a trial of ``epochs`` epochs runs: SDML has no lr steps (one
    constant Adam rate per modality, sdml/trainer.py), so a short trial is the start of the full
    training, e.g. ``10 of 200 epochs, constant lr (SDML has no lr steps)``."""
    if epochs < FULL_EPOCHS:
        ran = f"{epochs} of {FULL_EPOCHS} epochs"
    elif epochs == FULL_EPOCHS:
        ran = f"{epochs} epochs (the full training)"
    else:
        ran = f"{epochs} epochs (more than the default {FULL_EPOCHS})"
    return f"{ran}, constant lr (SDML has no lr steps)"


# ------------------------------------------------------------------------------------------ SDML
class SDMLBackend:
    """One trial per (modality, configuration) -- or, with ``--population N``, per (modality,
    population of up to N configurations) -- and one best configuration per modality."""

    group_key = "modality"
    metrics = {"anchor_map": ("best_anchor_map", "max"), "label_loss": ("best_val_label_loss", "min")}
    default_metric = "anchor_map"
    table_extra = ("best_anchor_map", "best_val_label_loss", "best_epoch")
    complete_key = None  # every trial stores its selected epoch's embeddings as it goes

    def check(self, req) -> tuple[Any, list[str]]:
        """The dataset (dataset.json only: each trial reads and checks its own modality's table,
        nothing else) and the modalities swept, each one in it."""
        ds = open_dataset(req.dataset_uri, validate=False)
        modalities = list(req.modalities or ds.modalities)
        for m in modalities:
            if m not in ds.modalities:
                raise InputError(f"--modality {m!r}: not in dataset {req.dataset_uri} "
                                 f"(it has: {', '.join(ds.modalities)})")
        return ds, modalities

    def prepare(self, req, sweep_dir: Path, space, checked: tuple[Any, list[str]]) -> dict[str, Any]:
        """Write the sweep's one projection.arrow for the dataset and modalities :meth:`check` found."""
        ds, modalities = checked
        base = from_dict(SDMLConfig, {**req.base, "epochs": req.epochs}, source="sweep base config")
        P = create_projection(base.dim, ds.info.n_classes, req.seed)
        digest = save_projection(sweep_dir / "projection.arrow", P, seed=req.seed)
        extra = {}
        if req.population > 1:  # configurations drawn here, grouped, one Tune trial per group
            configs = space.sample(req.num_samples, req.seed)
            for values in configs:  # a bad combination fails now, not in every trial
                from_dict(SDMLConfig, {**base.to_dict(), **values}, source=f"sweep configuration {values}")
            extra = {"population": req.population, "populations": populations(configs, req.population)}
        return {**extra, "dataset": {"uri": absolute_uri(req.dataset_uri), "name": ds.info.name,
                            "n_classes": ds.info.n_classes},
                "modalities": modalities,
                "input_dims": {m: ds.info.modalities[m].dim for m in modalities},
                "projection": {"file": "projection.arrow", "sha256": digest, "dim": base.dim,
                               "seed": req.seed},
                "base": base.to_dict(), "max_iterations": req.epochs}

    def n_groups(self, info: dict[str, Any]) -> int:
        return len(info["modalities"])

    @staticmethod
    def schedule(info: dict[str, Any]) -> str:
        """What every trial runs: ``10 of 200 epochs, constant lr (SDML has no lr steps)``."""
        return sdml_schedule(info["base"]["epochs"])

    @staticmethod
    def final_schedule(info: dict[str, Any]) -> str:
        """What ``xmr train --config best.json`` trains with no --epochs (best.json holds none)."""
        return sdml_schedule(FULL_EPOCHS)

    def param_space(self, tuned: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        from ray import tune

        if info.get("populations"):  # the slots' values are drawn already (prepare)
            return {"modality": tune.grid_search(list(info["modalities"])),
                    MEMBERS_KEY: tune.grid_search(info["populations"])}
        return {"modality": tune.grid_search(list(info["modalities"])), **tuned}

    def trainable(self, info: dict[str, Any], sweep_dir: Path):
        from ray import tune

        workers = info.get("trial_workers")  # --workers-per-modality W > 1
        setup = SDMLTrialSetup(
            sweep_dir=str(sweep_dir), dataset_uri=info["dataset"]["uri"],
            n_classes=info["dataset"]["n_classes"], projection_sha256=info["projection"]["sha256"],
            base=info["base"], device="auto" if info["gpus_per_trial"] > 0 else "cpu",
            threads=max(1, int(info["cpus_per_trial"])), save_each_selected=info.get("scheduler") != "fifo",
            **({"workers": workers["workers"], "resources_per_worker": workers["per_worker"]}
               if workers else {}))
        if workers:  # Ray Train inside the trial: the trial itself only drives it (trial_workers.py)
            from scalable_xmr.tuning.sdml_workers_trial import sdml_workers_trial  # loads Ray Train

            return tune.with_resources(tune.with_parameters(sdml_workers_trial, setup=setup),
                                       {"cpu": workers["driver_cpus"]})
        resources = self.trial_resources(info)
        # Tune asks per trial: a small modality's trial packs onto a fraction of a GPU.
        fn = sdml_population_trial if info.get("populations") else sdml_trial
        return tune.with_resources(tune.with_parameters(fn, setup=setup),
                                   lambda config: resources[config["modality"]])

    @staticmethod
    def trial_resources(info: dict[str, Any]) -> dict[str, dict[str, float]]:
        """Per modality: --cpus-per-trial CPUs and --gpus-per-trial GPUs, a quarter of that for a
        small modality (input dim < 1024: its network and data take a fraction of a card)."""
        return {m: trial_resources(info, SMALL_GPU_SHARE if d < SMALL_INPUT_DIM else 1.0)
                for m, d in info["input_dims"].items()}

    def best_json(self, best: dict[Any, TrialRow], info: dict[str, Any], sweep_dir: Path,
                  tuned: list[str]) -> dict[str, Any]:
        """``{"model": "sdml", "per_modality": {m: {"config": {...}, ...}}}`` (cli/train.py's
        load_overrides format) plus the chosen combination scored on test once
        (``cross_modal``, labelled ``final_score.TEST_LABEL``)."""
        base = info["base"]
        # Besides the tuned values, fix what the sweep trained with and `xmr train` has no flag for
        # (hidden), or that the optimum depends on (batch size, normalisation). Epochs and dim are
        # the training job's.
        fixed = {k: base[k] for k in ("hidden", "batch_size", "normalize")}
        per = {}
        for m in info["modalities"]:
            row = best[m]
            per[m] = {"config": {**fixed, **{k: row.config[k] for k in tuned if k in row.config}},
                      "trial_id": row.trial_id,
                      "anchor_map": row.metrics.get("best_anchor_map"),
                      "val_label_loss": row.metrics.get("best_val_label_loss"),
                      "best_epoch": row.metrics.get("best_epoch"),
                      "epochs_trained": row.metrics.get("training_iteration"),
                      "trial_dir": str(trial_dir(sweep_dir, row.trial_id))}
        return {"model": "sdml", "dataset": info["dataset"], "projection": info["projection"],
                "schedule": {"trials": self.schedule(info), "final": self.final_schedule(info)},
                "per_modality": per, "cross_modal": sdml_test(per, info, sweep_dir)}

    @staticmethod
    def parent_metrics(best: dict[str, Any]) -> dict[str, float]:
        """The parent run's final metrics: each modality's best validation scores, and the test
        figures of the chosen combination (scored once): ``test/<m>/anchor_map``, ``map/<q>-<t>``,
        ``map/mean``."""
        out = {}
        for m, entry in best["per_modality"].items():
            for key in ("anchor_map", "val_label_loss"):
                if isinstance(entry.get(key), int | float):
                    out[f"best/{m}/{key}"] = float(entry[key])
        test = best["cross_modal"]
        out.update({f"test/{m}/anchor_map": v for m, v in test.get("anchor_map", {}).items()})
        out.update({f"map/{k}": v for k, v in test.get("map", {}).items()})
        if "map_mean" in test:
            out["map/mean"] = test["map_mean"]
        return out

    @staticmethod
    def summary_line(best: dict[str, Any]) -> str:

        return sdml_summary(best["cross_modal"])
