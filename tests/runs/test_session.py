"""The run lifecycle on its own (runs/session.py), with a fake kind of run: no Ray, no model.

The fake kind's units are run.json ``members``; its ``train`` hands back whatever Outcome a test
sets, so every path of the lifecycle is reached: new, failed unit, Ctrl-C, resume (the stored run
read and checked once), a finished run only read, a refused resume that writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import scalable_xmr.runs.session as session
from scalable_xmr.config import TrackingConfig
from scalable_xmr.distributed.actors import Outcome
from scalable_xmr.errors import InputError, Interrupted
from scalable_xmr.io import atomic_write_json, read_json
from scalable_xmr.runs.session import RunRecords, RunSummary, SessionOptions, run_session
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.tracker import Tracker

OFF = TrackingConfig(enabled=False)


class FakeKind:
    """Units are names; a unit's result is its name upper-cased; each trained unit leaves a
    checkpoints/ folder (its training state)."""

    def __init__(self, outcome: Any = None, settings: str = "s1"):
        self.records = RunRecords(kind="branch", job="fake_job", where="members/*/checkpoints/",
                                  units=self.units, entry=self.entry, stored_results=self.stored_results,
                                  params=self.params, log_results=self.log_results, state=self.state,
                                  read_metrics=self.read_metrics)
        self.outcome = outcome  # None: every unit finishes
        self.settings = settings
        self.calls: dict[str, int] = {}
        self.trained: list[list[str]] = []
        self.finished_with: list[tuple[dict, list[str]]] = []

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def units(self, meta: RunMeta) -> dict[str, dict[str, Any]]:
        return meta.members if meta.members is not None else {}

    def entry(self, result: str) -> dict[str, Any]:
        return {"status": "finished", "result": result}

    def stored_results(self, store: RunStore, meta: RunMeta) -> dict[str, str]:
        return {u: e["result"] for u, e in self.units(meta).items() if e.get("status") == "finished"}

    def params(self, meta: RunMeta) -> dict[str, Any]:
        return {"units": ",".join(meta.members)}

    def log_results(self, tracker, parent, store, meta, metrics, results) -> None:
        for name in results:
            tracker.end_run(tracker.start_run(name, parent_id=parent))

    def read_metrics(self, store: RunStore) -> dict[str, Any]:
        return read_json(store.metrics_path)

    def state(self, store: RunStore, meta: RunMeta) -> tuple[list[Path], list[Path]]:
        return [store.root / "members" / u / "checkpoints" for u in meta.members], []

    def check_resume(self, store: RunStore, stored: RunMeta) -> None:
        self._count("check_resume")
        if stored.dataset["settings"] != self.settings:
            raise InputError(f"{store.root}: started with {stored.dataset['settings']}, not {self.settings}")

    def before_ray(self, todo) -> None:
        self._count("before_ray")

    def check_cluster(self) -> None:
        self._count("check_cluster")

    def new_meta(self, store: RunStore) -> RunMeta:
        store.root.mkdir(parents=True, exist_ok=True)
        return RunMeta(kind="branch", dataset={"uri": "/fake", "settings": self.settings},
                       members={u: {"status": "pending"} for u in ("a", "b")})

    def reopen(self, meta: RunMeta) -> None:
        self._count("reopen")

    def specs(self, store: RunStore, meta: RunMeta, todo) -> list[tuple[str, Path]]:
        for u in todo:
            meta.members[u]["settings"] = self.settings
        return [(u, store.root / "members" / u / "checkpoints") for u in todo]

    def train(self, jobs) -> Outcome:
        self.trained.append([u for u, _ in jobs])
        for _, state in jobs:
            state.mkdir(parents=True, exist_ok=True)
            (state / "last.pt").write_bytes(b"state")
        if self.outcome is not None:
            return self.outcome
        return Outcome({u: u.upper() for u, _ in jobs})

    def finish(self, store, meta, results, new, tracker, parent) -> dict[str, Any]:
        self.finished_with.append((dict(results), list(new)))
        metrics = {"units": sorted(results)}
        atomic_write_json(store.metrics_path, metrics)
        self.log_results(tracker, parent, store, meta, metrics, results)
        meta.finish()
        store.write(meta)
        return metrics


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """The lifecycle connects to Ray before it writes; the fake kind needs none."""
    connected = []
    monkeypatch.setattr(session, "connect", lambda address=None: connected.append(address))
    return connected


@pytest.fixture
def reads(monkeypatch):
    """How often run.json is read during a job."""
    count = [0]
    real = RunStore.read

    def counted(self):
        count[0] += 1
        return real(self)

    monkeypatch.setattr(RunStore, "read", counted)
    return count


def test_a_new_run_trains_every_unit_records_it_and_drops_the_training_state(tmp_path, no_ray):
    kind = FakeKind()
    summary = run_session(kind, ["a", "b"], SessionOptions(str(tmp_path / "run"), tracking=OFF))
    assert isinstance(summary, RunSummary) and summary.results == {"a": "A", "b": "B"}
    meta = RunStore(tmp_path / "run").read()
    assert meta.status == "finished" and meta.error is None
    assert meta.members == {u: {"status": "finished", "result": u.upper(), "settings": "s1"} for u in "ab"}
    assert kind.trained == [["a", "b"]] and kind.finished_with == [({"a": "A", "b": "B"}, ["a", "b"])]
    assert kind.calls == {"before_ray": 1, "check_cluster": 1} and no_ray == [None]
    assert not any((tmp_path / "run" / "members" / u / "checkpoints").exists() for u in "ab")
    assert summary.training_state.startswith("removed")


def test_keep_checkpoints_keeps_the_training_state(tmp_path):
    opts = SessionOptions(str(tmp_path / "run"), keep_checkpoints=True, tracking=OFF)
    summary = run_session(FakeKind(), ["a", "b"], opts)
    assert (tmp_path / "run" / "members" / "a" / "checkpoints" / "last.pt").is_file()
    assert summary.training_state.startswith("kept (--keep-checkpoints)")


def test_a_failed_unit_is_recorded_with_its_line_the_finished_one_as_finished(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    kind = FakeKind(Outcome({"a": "A"}, failed="b", error=InputError("b.parquet: row 3 is NaN")))
    opts = SessionOptions(str(tmp_path / "run"), tracking=TrackingConfig(tracking_uri=uri))
    with pytest.raises(InputError, match="row 3 is NaN"):
        run_session(kind, ["a", "b"], opts)
    meta = RunStore(tmp_path / "run").read()
    assert meta.status == "failed" and meta.error == "InputError: b.parquet: row 3 is NaN"
    assert meta.members["a"]["status"] == "finished" and meta.members["a"]["result"] == "A"
    assert meta.members["b"] == {"status": "failed", "settings": "s1", "error": "b.parquet: row 3 is NaN"}
    assert kind.finished_with == []
    # The MLflow parent run was recorded before the units trained and ended FAILED.
    run = Tracker(uri, "scalable_xmr").client.get_run(meta.mlflow["parent_run_id"])
    assert run.info.status == "FAILED" and run.data.params == {"units": "a,b"}
    assert run.data.tags["job"] == "fake_job" and run.info.run_name == "branch:run"
    # A failed run keeps its training state, finished units' included.
    assert (tmp_path / "run" / "members" / "a" / "checkpoints" / "last.pt").is_file()


def test_ctrl_c_marks_the_run_failed_and_says_how_to_go_on(tmp_path):
    kind = FakeKind(Outcome({}, failed=None, error=KeyboardInterrupt()))
    with pytest.raises(Interrupted) as caught:
        run_session(kind, ["a", "b"], SessionOptions(str(tmp_path / "run"), tracking=OFF))
    assert "--resume" in caught.value.hint and str(tmp_path / "run") in caught.value.hint
    meta = RunStore(tmp_path / "run").read()
    assert meta.status == "failed" and meta.error.startswith("KeyboardInterrupt")
    assert {e["status"] for e in meta.members.values()} == {"pending"}


def test_resume_reads_and_checks_the_stored_run_once_and_trains_only_what_is_left(tmp_path, reads):
    run = str(tmp_path / "run")
    with pytest.raises(InputError):
        run_session(FakeKind(Outcome({"a": "A"}, "b", InputError("b broke"))), ["a", "b"],
                    SessionOptions(run, tracking=OFF))
    reads[0] = 0
    kind = FakeKind()
    summary = run_session(kind, ["a", "b"], SessionOptions(run, resume=True, tracking=OFF))
    assert reads[0] == 1  # run.json read once by the job, checked once by the kind
    assert kind.calls == {"check_resume": 1, "before_ray": 1, "check_cluster": 1, "reopen": 1}
    assert kind.trained == [["b"]]
    assert kind.finished_with == [({"a": "A", "b": "B"}, ["b"])]
    assert summary.results == {"b": "B"}  # what this job trained
    meta = RunStore(run).read()
    assert meta.status == "finished" and "error" not in meta.members["b"]


def test_resume_of_a_finished_run_only_reads_it(tmp_path, no_ray):
    run = tmp_path / "run"
    run_session(FakeKind(), ["a", "b"], SessionOptions(str(run), tracking=OFF))
    before = (run / "run.json").read_bytes()
    kind = FakeKind()
    summary = run_session(kind, ["a", "b"], SessionOptions(str(run), resume=True, tracking=OFF))
    assert (run / "run.json").read_bytes() == before and kind.trained == []
    assert summary.results == {} and summary.metrics == read_json(run / "metrics.json")
    assert summary.tracking == "(tracking off)"
    # --keep-checkpoints cannot keep what the finished run already dropped: one line, nothing written.
    with pytest.raises(InputError, match="--keep-checkpoints"):
        run_session(FakeKind(), ["a", "b"], SessionOptions(str(run), resume=True, keep_checkpoints=True,
                                                           tracking=OFF))
    assert (run / "run.json").read_bytes() == before


def test_a_refused_resume_writes_nothing_and_starts_no_ray(tmp_path, no_ray):
    run = tmp_path / "run"
    with pytest.raises(InputError):
        run_session(FakeKind(Outcome({}, "a", InputError("a broke"))), ["a", "b"],
                    SessionOptions(str(run), tracking=OFF))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    connected = len(no_ray)
    with pytest.raises(InputError, match="started with s1, not s2"):
        run_session(FakeKind(settings="s2"), ["a", "b"], SessionOptions(str(run), resume=True, tracking=OFF))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert len(no_ray) == connected
