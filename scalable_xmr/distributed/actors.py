"""Run work in Ray actors: one actor per task, gang-placed, restarted after a crash, live progress.

A task is a module-level function and its payload -- paths and configs, never arrays -- and the
actor calls ``fn(payload, reporter)`` in its own process. Ray restarts a crashed actor
(``max_restarts``) and retries the call (``max_task_retries``), so ``fn`` must continue from what it
checkpointed (the SDML and branch trainers do). ``reporter.progress(row)`` feeds the driver's
progress bars (a row: ``name``, ``epoch``, ``epochs``, ``status``); ``reporter.event(text)`` prints
one line there. Both the SDML job (one actor per modality) and the branch job (one per model or
ensemble member) run through :func:`run_tasks`, which hands back a typed :class:`Outcome` (every
finished task's result, and the task that failed with its error) for the run lifecycle to record
(runs/session.py); :func:`run_actors` is the same, raising the error.

Where: the actors' placement group puts each bundle where it fits (PACK: the fewest nodes; one GPU a
node spreads GPU actors one per node). On a cluster of several nodes the driver prints which node
each task was placed on, and an actor restarted after its node (or process) was lost prints the node
it came back on; every progress row carries the ``node_id`` it was reported from. The progress hub
lives on the driver's node, so losing a worker node never loses the driver's view of the others.

CPUs: ``ActorResources.cpus`` per actor, by default the cluster's CPUs shared out evenly (fractions
allowed); a payload with a ``num_threads`` field left ``None`` gets as many torch threads as whole
CPUs in its share (at least one). GPUs: ``gpus`` per actor, fractional packs several on one card.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from scalable_xmr.distributed.cluster import (
    can_autoscale,
    cluster_cpus,
    describe_cluster,
    largest_node,
    node_problem,
)
from scalable_xmr.distributed.progress import ProgressBars, Reporter
from scalable_xmr.errors import ActorDiedError, InputError, XMRError


@dataclass(frozen=True)
class ActorTask:
    """``fn(payload, reporter)`` run in an actor of its own; ``name`` labels its bar and result."""

    name: str
    fn: Callable[[Any, Reporter], Any]
    payload: Any


@dataclass(frozen=True)
class ActorResources:
    """What each actor of one :func:`run_actors` call gets."""

    gpus: float = 0.0  # per actor; fractional packs several actors on one GPU
    cpus: float | None = None  # per actor; None: the cluster's CPUs shared out evenly
    max_restarts: int = 2  # Ray restarts a crashed actor this often (its call is retried meanwhile)
    placement_timeout_s: float = 600.0  # how long an autoscaling cluster may take to place them
    flags: tuple[str, str] = ("--cpus-per-modality", "--gpus-per-modality")  # named in errors


@dataclass
class Outcome:
    """What a set of tasks came to: every finished task's result by name and, when one failed (or
    the driver was interrupted), that task's name (None: no single task) and the error."""

    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    failed: str | None = None
    error: BaseException | None = None

    def then(self, more: Outcome) -> Outcome:
        """This outcome followed by ``more`` (the next group of tasks of the same job)."""
        return Outcome({**self.results, **more.results}, more.failed, more.error)

    def value(self) -> dict[str, Any]:
        """The results, or the error raised."""
        if self.error is not None:
            raise self.error
        return self.results


class HubReporter(Reporter):
    """A task's :class:`Reporter` inside an actor: rows and events go to the driver's hub. Each
    call waits for the hub (one small round trip an epoch), so everything a task reported is in
    the hub before its result reaches the driver."""

    def __init__(self, hub: Any | None, node_id: str = "") -> None:
        self.hub, self.node_id = hub, node_id

    def progress(self, row: dict[str, Any]) -> None:
        if self.hub is not None:
            ray.get(self.hub.update.remote({**row, "node_id": self.node_id}))

    def event(self, text: str) -> None:
        if self.hub is not None:
            ray.get(self.hub.event.remote(text))


@ray.remote(num_cpus=0)
class ProgressHub:
    """Latest progress row of every name, polled by the driver for its progress bars."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.events: list[str] = []

    def update(self, row: dict[str, Any]) -> None:
        self.rows[row["name"]] = row

    def event(self, text: str) -> None:
        self.events.append(text)

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        events, self.events = self.events, []
        return self.rows, events


class _Worker:
    """The actor body. The hub is looked up by name: a handle passed as a constructor argument would
    live in the object store, which Ray warns can break actor restarts (ray-project/ray#53727)."""

    def __init__(self, task: ActorTask, hub_name: str | None) -> None:
        self.task = task
        context = ray.get_runtime_context()
        node_id = context.get_node_id()
        self.reporter = HubReporter(None if hub_name is None else ray.get_actor(hub_name), node_id)
        with warnings.catch_warnings():  # Ray 2.60's property uses its own deprecated actor_id inside
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = context.was_current_actor_reconstructed
        if restarted:  # Ray restarted it: its process or node was lost
            self.reporter.event(f"{task.name}: actor restarted on node {node_label(node_id)} "
                                f"(pid {os.getpid()})")

    def run(self) -> Any:
        return self.task.fn(self.task.payload, self.reporter)


def node_label(node_id: str, addresses: dict[str, str] | None = None) -> str:
    """A node as the driver prints it: its id's first 8 hex digits and its address (``addresses``:
    node id to address, as :func:`node_addresses` gives; asked of Ray when not given)."""
    address = (node_addresses() if addresses is None else addresses).get(node_id, "?")
    return f"{node_id[:8]} ({address})"


def node_addresses() -> dict[str, str]:
    """Every node Ray knows of (alive or not), by id: its address."""
    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}


def describe_placement(pg, names: Sequence[str]) -> str | None:
    """One line naming the node each task's bundle was placed on; None on a one-node cluster."""
    nodes = ray.nodes()  # asked once, for the count and every task's address
    if sum(1 for n in nodes if n.get("Alive")) < 2:
        return None
    addresses = {n["NodeID"]: n["NodeManagerAddress"] for n in nodes}
    placed = placement_group_table(pg)["bundles_to_node_id"]
    return "placement: " + ", ".join(f"{name} on node {node_label(placed[i], addresses)}"
                                     for i, name in enumerate(names))


def cpu_share(resources: ActorResources, n_actors: int) -> float:
    """CPUs per actor: as asked, 1 beside a GPU, else the cluster's CPUs divided evenly."""
    if resources.cpus is not None:
        return resources.cpus
    if resources.gpus > 0:
        return 1.0
    # Leave the driver a sliver so actors never starve it; floor at 1/100 CPU.
    return max(math.floor(100 * cluster_cpus() / n_actors) / 100, 0.01)


def with_threads(payload: Any, cpus: float) -> Any:
    """``payload`` with ``num_threads`` set to the whole CPUs of its share, when it has that field
    and it is unset."""
    if dataclasses.is_dataclass(payload) and getattr(payload, "num_threads", 0) is None:
        return dataclasses.replace(payload, num_threads=max(1, int(cpus)))
    if isinstance(payload, list):
        return [with_threads(p, cpus) for p in payload]
    return payload


def _wait_for_placement(pg, resources: ActorResources) -> None:
    """Wait for the placement group's bundles; on timeout remove it and say what the cluster has."""
    timeout = resources.placement_timeout_s if can_autoscale() else 60.0
    try:
        ray.get(pg.ready(), timeout=timeout)
    except GetTimeoutError as e:  # the caller removes the placement group
        raise InputError(
            f"could not place {len(pg.bundle_specs)} actor(s) of {pg.bundle_specs[0]} within "
            f"{timeout:g}s; the cluster has {describe_cluster()}"
        ) from e


def _check_fits(bundle: dict[str, float], resources: ActorResources) -> None:
    """An actor bigger than every node would wait for placement in vain: say so at once (an
    autoscaling cluster may still add a bigger node, so it is given the benefit of the doubt)."""
    if can_autoscale():
        return
    largest, described = largest_node(), describe_cluster()
    for (key, flag) in zip(("CPU", "GPU"), resources.flags, strict=True):
        problem = node_problem(key, bundle.get(key, 0.0), flag, largest[key], described)
        if problem:
            raise InputError(problem)


def unwrap_actor_error(error: Exception) -> Exception:
    """The user-facing error inside a Ray task error, when there is one; an actor that died for
    good becomes an :class:`ActorDiedError`."""
    cause = getattr(error, "cause", None)
    if isinstance(error, RayTaskError) and isinstance(cause, XMRError | ValueError | OSError):
        return cause
    if isinstance(error, RayActorError):
        return ActorDiedError(f"an actor died and could not be restarted ({type(error).__name__})")
    return error


def _collect(names: Sequence[str], refs: Sequence, hub, bars: ProgressBars, outcome: Outcome,
             poll_s: float = 0.5) -> None:
    """Every task's result by name into ``outcome``, refreshing the progress bars while they run.
    The first actor that fails ends it at once, recorded as its user-facing error, so the caller
    stops the others promptly instead of letting them train on."""
    index = {ref: name for name, ref in zip(names, refs, strict=True)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
        for ref in done:
            try:
                outcome.results[index[ref]] = ray.get(ref)
            except (RayTaskError, RayActorError) as e:
                outcome.failed, outcome.error = index[ref], unwrap_actor_error(e)
                return
        bars.update(*ray.get(hub.snapshot.remote()))
    bars.update(*ray.get(hub.snapshot.remote()))  # everything reported before the last result
    outcome.results = {name: outcome.results[name] for name in names}


def run_actors(tasks: Sequence[ActorTask], resources: ActorResources, show_progress: bool = True,
               bars: ProgressBars | None = None) -> dict[str, Any]:
    """:func:`run_tasks`' results, or the error of the task that failed, raised."""
    return run_tasks(tasks, resources, show_progress, bars).value()


def run_tasks(tasks: Sequence[ActorTask], resources: ActorResources, show_progress: bool = True,
              bars: ProgressBars | None = None) -> Outcome:
    """Every task in its own actor, all at once in one placement group: the :class:`Outcome`.

    An error before the tasks start (the resources do not fit) is raised; once they run, an error
    of a task, or Ctrl-C, ends them all and is handed back with what had finished. ``bars``:
    progress bars to draw into (e.g. shared by several calls); by default one bar per task, closed
    at the end.
    """
    if not tasks:
        return Outcome()
    cpus = cpu_share(resources, len(tasks))
    bundle = {"CPU": cpus, **({"GPU": resources.gpus} if resources.gpus > 0 else {})}
    _check_fits(bundle, resources)
    hub_name = f"xmr-progress-{uuid.uuid4().hex[:12]}"
    # On the driver's node: a lost worker node must not take the hub (and every actor's reports) along.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    hub = ProgressHub.options(name=hub_name, scheduling_strategy=here).remote()
    own_bars = bars is None
    bars = bars or ProgressBars([t.name for t in tasks], enabled=show_progress, stream=sys.stderr)
    pg = placement_group([dict(bundle) for _ in tasks], strategy="PACK")
    actors, calls = [], []
    try:
        _wait_for_placement(pg, resources)
        where = describe_placement(pg, [t.name for t in tasks])
        if where is not None:
            bars.update({}, [where])
        worker = ray.remote(_Worker)
        for i, task in enumerate(tasks):
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
            # The call is retried for as long as the actor may still be restarted (-1): a restart
            # on another node can take several retries' worth of "actor temporarily unavailable"
            # (its old node not yet known dead, its bundle not yet placed again), and an actor
            # out of restarts fails the call anyway. Errors the task raises are never retried.
            options = {"num_cpus": cpus, "num_gpus": resources.gpus, "max_restarts": resources.max_restarts,
                       "max_task_retries": -1, "scheduling_strategy": strategy}
            task = dataclasses.replace(task, payload=with_threads(task.payload, cpus))
            actors.append(worker.options(**options).remote(task, hub_name))
        calls = [a.run.remote() for a in actors]
        outcome = Outcome()
        try:
            _collect([t.name for t in tasks], calls, hub, bars, outcome)
        except BaseException as e:  # Ctrl-C (or Ray itself failing) while the tasks run
            outcome.error = e
        return outcome
    finally:
        # Cancelled first: a call still running when its actor is killed (Ctrl-C, another task's
        # error) would otherwise be "retried" (max_task_retries -1), and Ray would say so on the
        # terminal ("Task _Worker.run failed ... so the task will be retried").
        for call in calls:
            ray.cancel(call)
        for a in actors:
            ray.kill(a)
        ray.kill(hub)
        remove_placement_group(pg)
        if own_bars:
            bars.close()
