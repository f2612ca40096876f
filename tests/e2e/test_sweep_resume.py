"""An interrupted sweep (SIGINT to the driver, as Ctrl-C) resumes with --resume without re-running
the trials that had finished, and ends with the right number of trials (and MLflow runs)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from ray import tune

from scalable_xmr.config import TrackingConfig
from scalable_xmr.io import read_json
from scalable_xmr.tuning.trial_io import read_starts

pytestmark = pytest.mark.slow


class InterruptAfter(tune.Callback):
    """While ``armed`` exists: once ``n`` trials have completed, sends SIGINT to the driver (as
    Ctrl-C would) when the next trial reports its 2nd epoch, i.e. in the middle of that trial.

    Tune stores callbacks in tuner.pkl and brings them back on resume: the file keeps this one
    from firing a second time. ``log`` gets the completed trial ids and the interrupted one.
    """

    def __init__(self, n: int, armed: Path, log: Path):
        self.n, self.armed, self.log = n, armed, log

    def _read(self) -> dict:
        return json.loads(self.log.read_text()) if self.log.exists() else {"completed": []}

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.armed.exists():
            state = self._read()
            self.log.write_text(json.dumps({**state, "completed": [*state["completed"], trial.trial_id]}))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        state = self._read()
        if self.armed.exists() and len(state["completed"]) >= self.n and result["training_iteration"] == 2:
            self.armed.unlink()
            self.log.write_text(json.dumps({**state, "interrupted": trial.trial_id}))
            os.kill(os.getpid(), signal.SIGINT)  # Tune's handler: stop, save the experiment state


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_local, small_xmedia, tmp_path):
    from mlflow.tracking import MlflowClient

    from scalable_xmr.tuning import SweepRequest, run_sweep

    armed, log = tmp_path / "armed", tmp_path / "completed.json"
    armed.touch()
    tracking = TrackingConfig(f"sqlite:///{tmp_path}/mlflow.db", "resume-test")
    req = SweepRequest("sdml", small_xmedia, storage=str(tmp_path / "sweeps"), name="r", num_samples=3,
                       epochs=3, scheduler="fifo", max_concurrent=1, modalities=("audio",),
                       base={"dim": 32, "hidden": 32, "batch_size": 20, "checkpoint_every": 1},
                       tracking=tracking, verbose=0)
    first = run_sweep(req, callbacks=(InterruptAfter(1, armed, log),))
    sweep = Path(first.sweep_dir)
    assert not first.finished and not (sweep / "best.json").exists()
    assert read_json(sweep / "sweep.json")["status"] == "interrupted"
    state = json.loads(log.read_text())
    finished_before, interrupted = state["completed"], state["interrupted"]
    assert len(finished_before) == 1 and interrupted not in finished_before
    # Interrupted: the trials' state is kept, once -- in Tune's checkpoint folders; a trial that
    # reported its checkpoint holds no copy of its own.
    assert list(sweep.glob("*/checkpoint_*"))
    assert not list((sweep / "trials" / finished_before[0]).rglob("last.pt*"))

    second = run_sweep(SweepRequest("sdml", "", storage=str(tmp_path / "sweeps"), name="r", resume=True,
                                    tracking=tracking, verbose=0))
    assert second.finished and second.n_trials == 3
    assert read_json(sweep / "sweep.json")["status"] == "finished"
    assert (sweep / "best.json").is_file()
    assert not list(sweep.glob("*/checkpoint_*")) and not list(sweep.rglob("last.pt*"))  # finished: gone
    assert sorted(r.trial_id for r in second.trials) == sorted(p.name for p in (sweep / "trials").iterdir())
    for trial in second.trials:
        assert trial.metrics["training_iteration"] == 3 and trial.error is None
        starts = read_starts(sweep / "trials" / trial.trial_id)
        if trial.trial_id in finished_before:
            assert len(starts) == 1, f"finished trial {trial.trial_id} was run again"
        elif trial.trial_id == interrupted:
            # Resumed from its last Tune checkpoint, not from scratch: epoch 2's if Tune had
            # registered it before stopping (it saves asynchronously), else epoch 1's.
            assert len(starts) == 2 and starts[0]["resumed_from_epoch"] is None
            assert starts[1]["resumed_from_epoch"] in (1, 2)
        else:  # created after the resume
            assert len(starts) == 1

    # The resumed sweep kept its parent run and opened no second child for any trial.
    client = MlflowClient(tracking.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("resume-test").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.params["trial_id"] for c in children) == sorted(r.trial_id for r in second.trials)
    assert all(c.info.status == "FINISHED" for c in children)
