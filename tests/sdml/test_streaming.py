"""A rank that streams its rows (sdml/streaming.py) without Ray: a fake context serves the
batches Ray Data would, so the seeding, the step count, the statistics it is given and the outputs
rank 0 writes are checked in one process. The Ray side runs in tests/e2e/test_train_stream.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_runs import modality_spec_for

from scalable_xmr.config import SDMLConfig
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.errors import InputError
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.streaming import StreamPlan, StreamRankTrainer, shuffle_seed, stream_steps
from scalable_xmr.sdml.trainer import ModalityTrainer, TrainResult
from scalable_xmr.store.run_store import RunStore

CFG = SDMLConfig(dim=32, hidden=32, epochs=3, batch_size=25, checkpoint_every=2, lr=1e-3)
MODALITY = "audio"  # small synthetic XMedia: 100 train / 20 val / 20 test rows of 16 features


def _job(root: Path, data: str, cfg: SDMLConfig = CFG) -> ModalitySpec:
    return modality_spec_for(root, data, cfg, MODALITY)


class FakeStream:
    """A StreamContext of a world of one over the table in memory: train batches in the order a
    generator seeded by ``shuffle_seed`` draws (as a local shuffle buffer would)."""

    rank, world_size, device = 0, 1, "cpu"

    def __init__(self, data: str) -> None:
        ds = open_dataset(data)
        self.splits = {s: ds.read_split(MODALITY, s) for s in ("train", "val", "test")}
        self.seeds: list[int | None] = []
        self.reports: list[dict] = []

    def load_checkpoint(self, loader):
        return None

    def report(self, metrics, checkpoint_dir=None):
        self.reports.append(metrics)

    def train_batches(self, name, batch_size, *, shuffle_buffer=None, shuffle_seed=None):
        self.seeds.append(shuffle_seed)
        split = self.splits[name]
        order = np.random.default_rng(shuffle_seed).permutation(len(split.ids))
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            yield {"x": torch.from_numpy(split.features[rows]), "y": torch.from_numpy(split.labels[rows])}


def _plan(data: str, eval_batch: int = 7) -> StreamPlan:
    x = open_dataset(data).read_split(MODALITY, "train").features.astype(np.float64)
    return StreamPlan(len(x), x.shape[1], x.mean(0), x.var(0), shuffle_rows=50, eval_batch=eval_batch)


def test_shuffle_seeds_differ_by_epoch_and_rank_and_repeat():
    seeds = {(e, r): shuffle_seed(3, e, r) for e in range(20) for r in range(8)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(shuffle_seed(3, e, r) == s for (e, r), s in seeds.items())
    assert shuffle_seed(4, 0, 0) != shuffle_seed(3, 0, 0)


@pytest.mark.parametrize(("n", "b", "w", "steps"), [(100, 25, 1, 4), (100, 25, 2, 3), (100, 25, 4, 3),
                                                   (25, 25, 2, 0), (4000, 100, 2, 40), (4001, 100, 3, 39)])
def test_every_rank_takes_the_same_whole_steps(n, b, w, steps):
    assert stream_steps(n, b, w) == steps
    slices = [-(-b // w)] * w  # the largest slice bounds every rank's whole batches
    assert all(steps * s <= n // w for s in slices)


def test_a_streaming_rank_standardises_with_the_given_statistics(tmp_path, small_xmedia, one_torch_thread):
    rank = StreamRankTrainer(_job(tmp_path / "s", small_xmedia), FakeStream(small_xmedia),
                             _plan(small_xmedia))
    whole = ModalityTrainer(_job(tmp_path / "m", small_xmedia))
    torch.testing.assert_close(rank.model.feature_mean, whole.model.feature_mean)
    torch.testing.assert_close(rank.model.feature_std, whole.model.feature_std)
    assert rank.x == {} and rank.data is None  # nothing held


def test_a_streaming_rank_trains_reproducibly_and_writes_every_row(tmp_path, small_xmedia, one_torch_thread):
    """Seeds (seed, epoch, rank) per epoch; the same seeds give the same weights; the embeddings of
    val and test cover every id, in order, encoded in batches of 7 (not a multiple of the rows)."""
    states = []
    for run in ("a", "b"):
        ctx = FakeStream(small_xmedia)
        rank = StreamRankTrainer(_job(tmp_path / run, small_xmedia), ctx, _plan(small_xmedia))
        rank.run()
        states.append(rank.model.state_dict())
        assert ctx.seeds == [shuffle_seed(rank.seed, e, 0) for e in range(CFG.epochs)]
    for k, v in states[0].items():
        torch.testing.assert_close(states[1][k], v, rtol=0, atol=0, msg=k)
    store = RunStore(tmp_path / "a" / "run")
    result = ctx.reports[-1]["result"]
    assert result["epochs"] == CFG.epochs and len(result["history"]) == CFG.epochs
    for split in ("val", "test"):
        ids, labels, emb = store.read_embeddings(MODALITY, split, 20)
        assert list(ids) == list(ctx.splits[split].ids) and emb.shape == (len(ids), CFG.dim)
        np.testing.assert_array_equal(labels, ctx.splits[split].labels)
        # rank 0's embeddings are the saved model's encoding of the raw rows
        model_emb = rank.model.encode(torch.from_numpy(ctx.splits[split].features)).numpy()
        np.testing.assert_allclose(emb, model_emb, rtol=1e-5, atol=1e-6)
    assert store.model_path(MODALITY).is_file() and store.train_log_path(MODALITY).is_file()


def test_too_few_rows_for_a_whole_batch_on_every_rank_is_refused(tmp_path, small_xmedia, one_torch_thread):
    plan = _plan(small_xmedia)
    rank = StreamRankTrainer(_job(tmp_path, small_xmedia), FakeStream(small_xmedia),
                             StreamPlan(24, plan.input_dim, plan.mean, plan.var, 50))
    with pytest.raises(InputError, match="24 train rows over 1 workers leave no whole batch of 25"):
        rank.run()


def _stream_in_actor(job: ModalitySpec, max_restarts: int = 0) -> TrainResult:
    from scalable_xmr.config import IngestLimits
    from scalable_xmr.distributed.actors import ActorResources, ActorTask, run_tasks
    from scalable_xmr.sdml.streaming import stream_inputs, train_stream_in_actor

    limits = IngestLimits(cpus=0.5, task_cpus=0.25)
    task = ActorTask(MODALITY, train_stream_in_actor, (job, stream_inputs(job, limits), limits))
    outcome = run_tasks([task], ActorResources(cpus=0.5, max_restarts=max_restarts), show_progress=False)
    return outcome.value()[MODALITY]


@pytest.mark.usefixtures("ray_local")
def test_one_worker_streams_in_the_modalitys_actor_as_ray_train_would(tmp_path, small_xmedia):
    """W = 1 streamed in an actor (no TorchTrainer) reads the same batches as Ray Train's one worker
    (same file order, one split share, the same local shuffle seeds): the same network."""
    from scalable_xmr.sdml.streaming import train_modality_streaming

    job = dataclasses.replace(_job(tmp_path / "actor", small_xmedia), num_threads=1)
    result = _stream_in_actor(job)
    assert result.epochs == CFG.epochs and result.resumed_at_epoch == []
    train = dataclasses.replace(_job(tmp_path / "train", small_xmedia), num_threads=1)
    train_modality_streaming(train, 1, resources_per_worker={"CPU": 0.5}, start_timeout_s=120)
    a, b = (RunStore(j.run_dir).load_model(MODALITY)["state_dict"] for j in (job, train))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ids, _, emb = RunStore(job.run_dir).read_embeddings(MODALITY, "test", 20)
    assert emb.shape == (20, CFG.dim) and len(set(ids)) == 20


@pytest.mark.usefixtures("ray_local")
def test_a_crashed_stream_actor_restarts_from_its_checkpoint(tmp_path, small_xmedia, crash_after):
    job = dataclasses.replace(_job(tmp_path, small_xmedia, dataclasses.replace(CFG, checkpoint_every=1)),
                              num_threads=1)
    crash_after({f"{MODALITY}/rank0": 2})  # the actor's process dies after its epoch-2 checkpoint
    result = _stream_in_actor(job, max_restarts=1)
    assert result.epochs == CFG.epochs and result.resumed_at_epoch == [2]
    assert RunStore(job.run_dir).train_log_path(MODALITY).is_file()
