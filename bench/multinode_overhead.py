"""Multi-node overhead: the same SDML job on a 3-node ``cluster_utils`` cluster vs one node.

    .venv/bin/python bench/multinode_overhead.py                 # 3 rounds x 2 jobs each (~10 min)
    .venv/bin/python bench/multinode_overhead.py --rounds 1 --repeats 1 --epochs 5   # a quick look

The job: ``train_sdml`` (the SDML job as ``xmr train`` runs it, MLflow tracking to sqlite on) on
SYNTHETIC small XMedia-shaped data (``make_synthetic_xmedia(scale="small")``), 3 modalities (image,
text, audio), ``--epochs`` epochs, one CPU per modality actor, parallel strategy. Two Rays, each
with 3 CPUs in all:

- one node: a local Ray with 3 CPUs (``ray.init(address="local", num_cpus=3)``);
- three nodes: ``ray.cluster_utils.Cluster``, a head and two worker nodes of 1 CPU each, all on
  this machine (separate raylets, object stores and worker pools), the driver on the head; the
  placement group puts one modality actor on each node.

Measured per job: wall (``train_sdml`` call to return; Ray already up, its start-up listed apart)
and training (the mean over modalities of the seconds inside their training loop, reported by
each actor), so wall - training is what the job costs around training (actor start, data
loading, placement, evaluation, plots, MLflow). Before each job, ``run_actors`` of one no-op
task per modality measures Ray's own share of that (placement group, progress hub, actor
processes). Each round runs ``--repeats`` jobs on one node, then ``--repeats`` on three nodes;
medians over all rounds, and their ratio, come from this one run. The machine has 2 cores, so 3
single-threaded actors oversubscribe it the same way in both layouts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine_info, print_info, print_table

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
MODALITIES = ("image", "text", "audio")
QUIET = {"log_to_driver": False, "logging_level": "ERROR"}


def start_one_node() -> tuple[object, float]:
    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=len(MODALITIES), include_dashboard=False, **QUIET)
    return None, time.perf_counter() - start


def start_three_nodes() -> tuple[object, float]:
    import ray
    from ray.cluster_utils import Cluster

    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(len(MODALITIES) - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, **QUIET)
    return cluster, time.perf_counter() - start


def stop(cluster) -> None:
    import ray

    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()


def run_job(data: str, root: Path, tag: str, epochs: int) -> dict[str, float]:
    """One SDML job on the Ray this process is attached to; its wall and mean training seconds."""
    from scalable_xmr.config import ResourceConfig, SDMLConfig, TrackingConfig
    from scalable_xmr.sdml.job import TrainRequest, train_sdml

    sdml = SDMLConfig(dim=32, hidden=256, epochs=epochs, batch_size=20, checkpoint_every=5, lr=1e-3)
    req = TrainRequest(run_dir=str(root / tag), dataset_uri=data, sdml=sdml, modalities=MODALITIES,
                       resources=ResourceConfig(cpus_per_modality=1.0),
                       tracking=TrackingConfig(f"sqlite:///{root}/mlflow.db", "bench"), show_progress=False)
    start = time.perf_counter()
    summary = train_sdml(req)
    wall = time.perf_counter() - start
    train = statistics.mean(r.train_seconds for r in summary.results.values())
    return {"wall": wall, "train": train}


def noop(payload: int, reporter) -> int:
    reporter.progress({"name": f"t{payload}", "epoch": 1, "epochs": 1, "status": "done"})
    return payload


def run_noop_actors() -> float:
    """Seconds ``run_actors`` takes for one no-op task per modality, one CPU each: what Ray itself
    costs a job (placement group, hub, actor processes, results), without the job's work."""
    from scalable_xmr.distributed.actors import ActorResources, ActorTask, run_actors

    tasks = [ActorTask(f"t{i}", noop, i) for i in range(len(MODALITIES))]
    start = time.perf_counter()
    run_actors(tasks, ActorResources(cpus=1.0, max_restarts=0), show_progress=False)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="epochs per modality (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (one node, three nodes) (3)")
    p.add_argument("--repeats", type=int, default=2, help="jobs per layout in each round (2)")
    args = p.parse_args()

    from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia

    print_info("Machine", machine_info(threads=1))
    layouts = {"1 node, 3 CPUs": start_one_node, "3 nodes x 1 CPU": start_three_nodes}
    jobs: dict[str, list[dict[str, float]]] = {name: [] for name in layouts}
    startup: dict[str, list[float]] = {name: [] for name in layouts}
    actors: dict[str, list[float]] = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory(prefix="multinode-bench-") as tmp:
        data = str(Path(tmp) / "data")
        make_synthetic_xmedia(data, scale="small", seed=0)
        # One job first, not counted: the process's first job pays one-off imports (MLflow,
        # matplotlib) and creates the MLflow database.
        cluster, _ = start_one_node()
        try:
            run_job(data, Path(tmp), "warm-up", args.epochs)
        finally:
            stop(cluster)
        for r in range(args.rounds):
            for name, start in layouts.items():
                cluster, seconds = start()
                startup[name].append(seconds)
                try:
                    for i in range(args.repeats):
                        actors[name].append(run_noop_actors())
                        jobs[name].append(run_job(data, Path(tmp), f"{name[0]}-{r}-{i}", args.epochs))
                        wall = jobs[name][-1]["wall"]
                        print(f"round {r + 1}, {name}: job {i + 1} {wall:.1f} s", flush=True)
                finally:
                    stop(cluster)

    med = {name: {**{k: statistics.median(j[k] for j in runs) for k in ("wall", "train")},
                  "actors": statistics.median(actors[name])} for name, runs in jobs.items()}
    one, three = med["1 node, 3 CPUs"], med["3 nodes x 1 CPU"]

    def row(what: str, key) -> tuple[str, ...]:
        a, b = key(one), key(three)
        return (what, f"{a:.1f} s", f"{b:.1f} s", f"{b / a:.2f}")

    n = args.rounds * args.repeats
    print_table(
        f"SDML job, {len(MODALITIES)} modalities x {args.epochs} epochs (synthetic small data), "
        f"median of {n} jobs per layout",
        ("quantity", "1 node, 3 CPUs", "3 nodes x 1 CPU", "ratio 3 nodes / 1 node"),
        [row("wall time of train_sdml", lambda m: m["wall"]),
         row("training loop (mean over modalities)", lambda m: m["train"]),
         row("wall - training (job overhead)", lambda m: m["wall"] - m["train"]),
         row(f"run_actors of {len(MODALITIES)} no-op tasks (Ray's share of it)", lambda m: m["actors"]),
         ("Ray start-up (median; not in wall)", f"{statistics.median(startup['1 node, 3 CPUs']):.1f} s",
          f"{statistics.median(startup['3 nodes x 1 CPU']):.1f} s", "")],
    )


if __name__ == "__main__":
    main()
