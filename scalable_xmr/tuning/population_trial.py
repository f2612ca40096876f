"""The SDML population trial: up to N configurations of one modality trained in one Tune trial.

With ``--population N`` an SDML sweep draws its configurations on the driver
(:meth:`SearchSpace.sample`, seeded by ``--seed``), groups those that share every shape-changing
value (batch size, hidden width: :func:`populations`) into populations of at most N, and runs one
Tune trial per (modality, population). The trial trains its slots (one configuration each) as one
batched computation (:class:`~scalable_xmr.sdml.population.PopulationTrainer`) and scores each
of them exactly as an ordinary trial does (``sdml_trial.py``): validation label loss, anchor mAP,
the selected epoch's ``model.pt`` (written when and as ``sdml_trial.py`` says), all in the slot's
own directory ``trials/<trial_id>-m<i>/``. Every report carries each slot's metrics under
``members``; the sweep's driver turns each slot into a result row (``results.rows_from_results``)
and an MLflow child run of its own (``tracking.SweepTracking``), so a population sweep records
every configuration as a sweep of single trials does. The trial's own metric for Tune's
scheduler is its best slot's (ASHA, when used, stops whole populations).

A *slot* is one configuration of a population (``PopulationTrainer.slots``, sdml/population.py);
the ``members`` key of the trial's config and reports keeps its old name (``results.MEMBERS_KEY``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import scalable_xmr.tuning.trial_io as trial_io
from scalable_xmr.config import SDMLConfig, from_dict
from scalable_xmr.sdml.outputs import save_selected
from scalable_xmr.sdml.population import POPULATION_KEYS, PopulationTrainer
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tuning.results import MEMBERS_KEY, slot_id
from scalable_xmr.tuning.sdml_trial import SDMLTrialSetup, anchor_map, start_trial_job


def populations(configs: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """``configs`` grouped by their shape-changing values, in order, in chunks of at most ``size``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for config in configs:
        key = tuple(sorted((k, v) for k, v in config.items() if k not in POPULATION_KEYS))
        groups.setdefault(key, []).append(config)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


def sdml_population_trial(config: dict[str, Any], setup: SDMLTrialSetup) -> None:
    """Tune function trainable: train the slots ``config["members"]`` of ``config["modality"]``
    together."""
    start = time.perf_counter()
    modality, slots = config["modality"], config[MEMBERS_KEY]
    cfgs = [from_dict(SDMLConfig, {**setup.base, **values}, source=f"population slot {values}")
            .resolved(modality) for values in slots]
    trial_id = trial_io.current_trial_id()
    directory = trial_io.trial_dir(setup.sweep_dir, trial_id)
    slot_dirs = [trial_io.trial_dir(setup.sweep_dir, slot_id(trial_id, i)) for i in range(len(cfgs))]
    job, ckpt_dir, state = start_trial_job(setup, directory, modality, cfgs[0])
    pop = PopulationTrainer(job, cfgs)
    best_map = list(state.get("best_anchor_map", [float("nan")] * pop.size))
    train_seconds = float(state.get("train_seconds", 0.0))
    labels, P = pop.data.labels["val"].cpu(), pop.P.cpu()

    def on_epoch(stats, checkpointed: bool) -> None:
        nonlocal train_seconds
        train_seconds += sum(s.seconds for s in stats)
        val_emb = pop.val_embeddings.cpu()  # (N, n, d): this epoch's, from its validation pass
        rows = []
        for i, (slot, st) in enumerate(zip(pop.slots, stats, strict=True)):
            val_map = anchor_map(val_emb[i], labels, P) if slot.failed is None else float("nan")
            if slot.best_epoch == pop.epoch:  # this slot's selected model changed
                best_map[i] = val_map
                if setup.save_each_selected and not pop.done:  # the last: below
                    _save_slot(pop, i, slot_dirs[i], val_emb[i])
            rows.append({
                "epoch": pop.epoch, "loss_train": st.loss_train, "loss_recon": st.loss_recon,
                "loss_label": st.loss_label, "val_label_loss": st.loss_val_label,
                "val_anchor_map": val_map, "best_epoch": slot.best_epoch,
                "best_val_label_loss": slot.best_val, "best_anchor_map": best_map[i],
                "train_seconds": train_seconds / pop.size, "n_train": len(pop.x["train"]),
                **({"error": slot.failed} if slot.failed else {}),
                **({"stopped_early": slot.stopped_early} if slot.stopped_early else {}),
            })
        metrics = {MEMBERS_KEY: rows, "epoch": pop.epoch, "population_size": pop.size,
                   "best_anchor_map": _best(rows, "best_anchor_map", max),
                   "best_val_label_loss": _best(rows, "best_val_label_loss", min),
                   "train_seconds": train_seconds}
        if pop.done:  # before the last report: Tune may end the trial on it
            for i, d in enumerate(slot_dirs):
                pop.write_outputs(i, d)
            metrics["trial_seconds"] = time.perf_counter() - start
            for row in rows:
                row["trial_seconds"] = metrics["trial_seconds"] / pop.size
        trial_io.report(metrics, ckpt_dir if checkpointed else None,
                        {"epoch": pop.epoch, "best_anchor_map": best_map, "train_seconds": train_seconds})

    pop.fit(on_epoch, checkpoint_at_end=False)


def _best(rows: list[dict[str, Any]], key: str, pick) -> float:
    values = [r[key] for r in rows if "error" not in r and math.isfinite(r[key])]
    return pick(values) if values else float("nan")


def _save_slot(pop: PopulationTrainer, i: int, directory: Path, val_emb) -> None:
    """Slot ``i``'s selected model and its val embeddings, in its own trial directory."""
    slot = pop.slots[i]
    save_selected(RunStore(directory), pop.job, pop.slot_model(i, best=True), slot.config,
                  slot.best_epoch, pop.data, {"val": val_emb})
