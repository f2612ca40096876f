"""Several Ray nodes on this machine (``ray.cluster_utils.Cluster``): placement and node loss (#13).

The module runs its own cluster, not the session's ``ray_local`` (shut down for the module and
started again after it: conftest ``ray_local_paused``): a head node with 1 CPU and no GPU, where
the driver attaches, and three worker nodes of 1 CPU and 1 GPU each. The GPUs are fake: Ray hands
each GPU actor ``CUDA_VISIBLE_DEVICES=0``, torch finds no CUDA, and the trainers must fall back to
the CPU. Each job asks one GPU per actor and trains two actors, so the placement group puts them on
two different worker nodes and leaves a third as spare capacity for a restart.

Node loss: once the watched actor has written a checkpoint to the run directory (storage every
node sees), every process of its node is frozen (SIGSTOP: nothing it does after this instant can
count), the epoch of that checkpoint is read, and the node is removed (its raylet killed; the
frozen workers killed after it). The actor must come back on the spare node, resume at exactly
that epoch and finish, and the job must complete with every modality (member) finished.

A data-parallel modality (W=2 Ray Train workers, one per worker node through a custom resource each
node has one of) loses the node of one worker once Ray Train registered a checkpoint: the worker
group restarts on the surviving and the spare node and ends with one uninterrupted process's weights.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.job import BranchRequest, train_branch
from scalable_xmr.config import ResourceConfig, SDMLConfig, TrackingConfig
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.sdml.data_parallel import train_modality_parallel
from scalable_xmr.sdml.job import TrainRequest, train_sdml
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.trainer import ModalityTrainer
from scalable_xmr.store import torchfile
from scalable_xmr.store.projection import create_projection, save_projection
from scalable_xmr.store.run_store import RunStore

pytestmark = pytest.mark.slow
GPU_NODES = 3
SLOT = "xmr_node_slot"  # one per worker node: a data-parallel worker asking one lands on a node of its own
# Slow enough per epoch (hidden 256) and long enough (80 epochs) that the node is removed well
# before the watched actor would finish; a checkpoint every 5 epochs.
SDML = SDMLConfig(dim=32, hidden=256, epochs=80, batch_size=20, checkpoint_every=5, lr=1e-3)
WATCH_TIMEOUT_S = 300  # generous: the machine is shared


@pytest.fixture(scope="module")
def cluster(ray_local_paused):
    head_args = {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                 # Notice a dead raylet within seconds (Ray's defaults take longer).
                 "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}}
    c = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def gpu_workers(c: Cluster) -> Cluster:
    """``c`` with exactly ``GPU_NODES`` live GPU worker nodes (a test before may have removed one)."""
    while len(c.worker_nodes) < GPU_NODES:
        c.add_node(num_cpus=1, num_gpus=1, resources={SLOT: 1})
    c.wait_for_nodes()
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == GPU_NODES + 1 and sum(n["Resources"].get("GPU", 0) for n in alive) == GPU_NODES
    return c


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc: no psutil here)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


@dataclass
class NodeLoss:
    """Watches a job from a thread: where its actors were placed, then removes ``target``'s node."""

    cluster: Cluster
    n_actors: int
    target_index: int  # the watched task's index (= its placement-group bundle)
    checkpoint_epoch: Callable[[], int | None]  # the watched task's newest checkpoint's epoch, None: none yet
    placement: list[str] = field(default_factory=list)  # node id per bundle, as first placed
    killed_at_epoch: int | None = None
    frozen: list[int] = field(default_factory=list)
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            self.placement = self._wait_for_placement()
            node_id = self.placement[self.target_index]
            node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
            self._wait(lambda: self.checkpoint_epoch() is not None, "a checkpoint")
            raylet = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process
            self.frozen = _children(raylet.pid)
            for pid in self.frozen:
                os.kill(pid, signal.SIGSTOP)
            self.killed_at_epoch = self.checkpoint_epoch()
            self.cluster.remove_node(node, allow_graceful=False)
            for pid in self.frozen:  # the whole machine is gone, its workers too
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        except BaseException as e:  # re-raised by the test
            self.error = e

    def _wait_for_placement(self) -> list[str]:
        found: list[str] = []

        def placed() -> bool:
            for pg in ray.util.placement_group_table().values():
                if pg["state"] == "CREATED" and len(pg["bundles"]) == self.n_actors:
                    nodes = pg["bundles_to_node_id"]
                    found[:] = [nodes[i] for i in range(self.n_actors)]
                    return True
            return False

        self._wait(placed, f"a placement group of {self.n_actors} bundles")
        return found

    @staticmethod
    def _wait(condition, what: str) -> None:
        deadline = time.monotonic() + WATCH_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {WATCH_TIMEOUT_S} s")
            time.sleep(0.02)


def file_epoch(checkpoint: Path) -> Callable[[], int | None]:
    """The epoch of an actor's checkpoint file (None while there is none)."""
    return lambda: int(torchfile.load(checkpoint)["epoch"]) if checkpoint.is_file() else None


def _run_with_node_loss(c: Cluster, names: list[str], target: str, checkpoint: Path, job):
    """Run ``job()`` while a NodeLoss watches it; returns (its result, the NodeLoss)."""
    loss = NodeLoss(c, len(names), names.index(target), file_epoch(checkpoint))
    thread = loss.start()
    result = job()
    thread.join(timeout=60)
    if loss.error is not None:
        raise loss.error
    assert loss.killed_at_epoch is not None, "the watched actor finished before its node was removed"
    return result, loss


def _check_placement_and_restart(c: Cluster, loss: NodeLoss, names: list[str], target: str, printed: str):
    """One actor per GPU worker node; the lost one came back on the spare node, as the job printed."""
    head = c.head_node.node_id
    workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0}
    assert len(set(loss.placement)) == len(names) and head not in loss.placement
    removed = loss.placement[names.index(target)]
    assert removed not in {n.node_id for n in c.worker_nodes}  # it is gone
    assert set(loss.placement) <= workers | {removed}  # GPU worker nodes only
    line = re.search(r"placement: (.*)", printed)
    assert line, printed
    address = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    assert line.group(1) == ", ".join(f"{m} on node {n[:8]} ({address[n]})"
                                      for m, n in zip(names, loss.placement, strict=True))
    spare = workers - set(loss.placement)
    restarted = re.findall(rf"{re.escape(target)}: actor restarted on node (\w+) \([\d.]+\) \(pid (\d+)\)",
                           printed)
    assert len(spare) == 1 and [r[0] for r in restarted] == [next(iter(spare))[:8]], printed
    return int(restarted[0][1])


def test_sdml_modalities_spread_one_per_node_and_survive_a_node_loss(cluster, small_xmedia, tmp_path, capfd):
    c = gpu_workers(cluster)
    names, target = ["image", "text"], "text"
    run = tmp_path / "run"
    req = TrainRequest(run_dir=str(run), dataset_uri=small_xmedia, sdml=SDML, modalities=tuple(names),
                       resources=ResourceConfig(gpus_per_modality=1.0),
                       tracking=TrackingConfig(enabled=False), show_progress=True)
    summary, loss = _run_with_node_loss(c, names, target, RunStore(run).checkpoint_path(target),
                                        lambda: train_sdml(req))
    printed = capfd.readouterr().err
    restarted_pid = _check_placement_and_restart(c, loss, names, target, printed)
    k = loss.killed_at_epoch
    assert 0 < k < SDML.epochs and k % SDML.checkpoint_every == 0
    assert summary.results[target].resumed_at_epoch == [k]
    assert summary.results["image"].resumed_at_epoch == []
    assert f"{target}: actor (pid {restarted_pid}) resumed from its checkpoint at epoch {k}" in printed
    assert summary.results[target].pid == restarted_pid and restarted_pid not in loss.frozen
    for m in names:  # every epoch once; on the CPU, although each actor was given a (fake) GPU
        assert [h["epoch"] for h in summary.results[m].history] == list(range(1, SDML.epochs + 1))
        assert summary.results[m].device == "cpu"
    meta = RunStore(run).read_finished()
    assert sorted(meta.finished_modalities()) == sorted(names)
    assert meta.modalities[target]["resumed_at_epoch"] == [k]
    assert len(summary.metrics.map) == 2


def test_branch_members_spread_one_per_node_and_survive_a_node_loss(cluster, small_pairs, small_configs,
                                                                    tmp_path, capfd):
    c = gpu_workers(cluster)
    epochs = 40
    trainer = PairTrainerConfig(model="vse", epochs=epochs, batch_size=16, lr=5e-3, seed=3, lr_decay_epochs=0)
    names, target = ["vse-seed3", "vse-seed4"], "vse-seed4"
    run = tmp_path / "run"
    req = BranchRequest(run_dir=str(run), dataset_uri=small_pairs, trainers={"vse": trainer},
                       model_configs={"vse": small_configs["vse"]}, ensemble=2, checkpoint_every=5,
                       tracking=TrackingConfig(enabled=False), show_progress=True)
    checkpoint = run / "models" / target / "checkpoints" / "last.pt"
    summary, loss = _run_with_node_loss(c, names, target, checkpoint, lambda: train_branch(req))
    printed = capfd.readouterr().err
    restarted_pid = _check_placement_and_restart(c, loss, names, target, printed)
    k = loss.killed_at_epoch
    assert 0 < k < epochs and k % 5 == 0
    assert summary.results[target].resumed_at_epoch == [k]
    assert summary.results["vse-seed3"].resumed_at_epoch == []
    assert f"{target}: actor (pid {restarted_pid}) resumes from its checkpoint" in printed
    assert summary.results[target].pid == restarted_pid
    for m in names:
        assert [h["epoch"] for h in summary.results[m].history] == list(range(1, epochs + 1))
        assert summary.results[m].device == "cpu"
    meta = RunStore(run).read_finished()
    assert all(meta.members[m]["status"] == "finished" for m in names)
    assert meta.members[target]["resumed_at_epoch"] == [k]
    assert summary.metrics.ensembles["vse"]["members"] == names


# ---- a data-parallel modality (Ray Train) across two nodes ------------------------------------------
DP_MODALITY = "audio"
# 100 train rows = 5 batches of 20 an epoch; a report an epoch, which Ray Train's controller takes in
# one per poll (0.25 s): the node is removed seconds before the run could end.
DP = SDMLConfig(dim=32, hidden=64, epochs=12, batch_size=20, checkpoint_every=2, lr=1e-3)
# float32 sums regrouped across two ranks (DDP's all-reduce) move the last bits of each step.
RTOL, ATOL = 1e-4, 1e-5


def _dp_job(run: Path, data: str) -> ModalitySpec:
    ds = open_dataset(data)
    run.mkdir(parents=True, exist_ok=True)
    digest = save_projection(run / "projection.arrow", create_projection(DP.dim, ds.info.n_classes, 0))
    return ModalitySpec(run_dir=str(run), modality=DP_MODALITY, config=DP, dataset_uri=data,
                       n_classes=ds.info.n_classes, projection_sha256=digest, num_threads=1)


def registered_epoch(ray_train_dir: Path) -> Callable[[], int | None]:
    """The epoch of the newest checkpoint Ray Train's controller has registered (its snapshot file,
    written once a checkpoint of every worker arrived); None while there is none."""
    snapshot = ray_train_dir / "checkpoint_manager_snapshot.json"

    def epoch() -> int | None:
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except (OSError, ValueError):  # not written yet, or being written
            return None
        return None if latest is None else int(latest["metrics"]["epoch"])

    return epoch


def test_a_data_parallel_modality_spans_two_nodes_and_survives_a_node_loss(cluster, small_xmedia, tmp_path):
    """W=2 Ray Train workers, each asking its node's one slot: they train on two worker nodes. Once
    the controller registered a checkpoint, the node of one worker is frozen and removed; Ray Train
    starts a new worker group (on the surviving node and the spare one), which resumes from the
    last checkpoint and ends with the weights of one uninterrupted process."""
    c = gpu_workers(cluster)
    job = _dp_job(tmp_path / "run", small_xmedia)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference_job = _dp_job(tmp_path / "reference", small_xmedia)
        expected = ModalityTrainer(reference_job).fit()
    finally:
        torch.set_num_threads(threads)
    ray_train = RunStore(job.run_dir).checkpoint_path(DP_MODALITY).parent / "ray-train"
    loss = NodeLoss(c, 2, 1, registered_epoch(ray_train))
    thread = loss.start()
    result = train_modality_parallel(job, 2, resources_per_worker={"CPU": 0.5, SLOT: 1}, max_failures=1,
                                     start_timeout_s=60)
    thread.join(timeout=60)
    if loss.error is not None:
        raise loss.error
    head = c.head_node.node_id
    assert len(set(loss.placement)) == 2 and head not in loss.placement  # two worker nodes
    seen = loss.killed_at_epoch
    assert seen is not None and seen % DP.checkpoint_every == 0
    # The group resumed from the newest registered checkpoint: the one seen before the node went,
    # or one registered while it was being frozen; never from scratch, never from the end.
    assert len(result.resumed_at_epoch) == 1, result.resumed_at_epoch
    k = result.resumed_at_epoch[0]
    assert seen <= k < DP.epochs and k % DP.checkpoint_every == 0
    assert [h["epoch"] for h in result.history] == list(range(1, DP.epochs + 1))
    for mine, theirs in zip(result.history, expected.history, strict=True):
        assert mine["loss_train"] == pytest.approx(theirs["loss_train"], rel=1e-5)
    assert result.best_epoch == expected.best_epoch
    got = RunStore(job.run_dir).load_model(DP_MODALITY)["state_dict"]
    want = RunStore(reference_job.run_dir).load_model(DP_MODALITY)["state_dict"]
    for key, a in want.items():
        torch.testing.assert_close(got[key], a, rtol=RTOL, atol=ATOL, msg=key)
