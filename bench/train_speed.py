"""SDML training speed: GEMM rate, one-modality step rate, Table 6 strategies, Ray's overhead.

    .venv/bin/python bench/train_speed.py                    # full: about 8 minutes on 2 quiet cores
    .venv/bin/python bench/train_speed.py --quick            # tiny data, a smoke test (numbers meaningless)
    .venv/bin/python bench/train_speed.py --skip-strategies  # sections 1-2 only (~4 minutes)

Everything is measured in one run on one machine, on SYNTHETIC XMedia-shaped data
(``make_synthetic_xmedia``: SDML Table 1 shapes, random content; speed does not depend on content):

1. float32 GEMM rate of ``torch.mm`` for the GEMMs one training step of the 4096-d image network runs
   (forward, grad-input, grad-weight of each layer; batch 100), and a large square 2048^3 GEMM.
2. One-modality training step rate in model FLOP/s = 6 x parameters x batch / step time for
   SDMLAutoencoder(4096) (encoder 4096-1024-1024-512, decoder back) at batch 100, through the real
   ``ModalityTrainer.train_epoch``, against a naive loop (default ``torch.optim.Adam``, a fresh
   ``randperm`` slice and an ``x[idx]`` gather every step, ``loss.item()`` every step), interleaved
   epoch by epoch so that load drift hits both alike. 6PB counts the first layer's input gradient,
   which autograd never computes (the input needs no gradient): the GEMM work actually executed is
   about 12% less than 6PB, so "% of GEMM rate" flatters training by that much (printed below).
3. Wall time of the whole job (``train_sdml``: start-up, training, evaluation, plots) for the
   parallel / serial / joint strategies (SDML-3/2/1, paper Table 6), split into training (inside the
   actors, ``TrainResult.train_seconds``) and everything outside it.
4. Ray's overhead: the same five modalities and epochs trained by ``ModalityTrainer.fit`` one after
   another in this process (no Ray) against the serial Ray job, compared per training epoch, with
   the fixed start-up costs listed separately.

Medians of repeats throughout; the figures are only as quiet as the machine (check the load average
printed at the top: other processes on the same cores slow everything down unevenly).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from itertools import pairwise
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from _common import machine_info, median_time, print_info, print_table

from scalable_xmr.config import ResourceConfig, SDMLConfig, TrackingConfig
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.functional.losses import sdml_loss
from scalable_xmr.models.sdml import SDMLAutoencoder
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.trainer import ModalityTrainer
from scalable_xmr.store.projection import create_projection, save_projection

STRATEGIES = ("parallel", "serial", "joint")


# ---- 1. GEMM rate ----------------------------------------------------------------------------------
def step_gemms(widths: list[int], batch: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(role, a, b) for every ``a @ b`` one training step of an MLP with these layer widths runs.

    Operands are laid out as autograd's linear backward uses them (transposed views, no copies).
    """
    gemms = []
    for i, (n_in, n_out) in enumerate(pairwise(widths)):
        x, w, grad_out = torch.randn(batch, n_in), torch.randn(n_out, n_in), torch.randn(batch, n_out)
        gemms.append((f"fwd {n_in}->{n_out}", x, w.t()))  # (B, in) @ (in, out)
        gemms.append((f"grad W {n_in}->{n_out}", grad_out.t(), x))  # (out, B) @ (B, in)
        if i > 0:  # the first layer's input needs no gradient
            gemms.append((f"grad x {n_in}->{n_out}", grad_out, w))  # (B, out) @ (out, in)
    return gemms


def gemm_flops(a: torch.Tensor, b: torch.Tensor) -> float:
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1]


def step_gemm_rate(widths: list[int], batch: int, repeats: int) -> tuple[float, float, float]:
    """(GFLOP/s, GFLOP, seconds) of one step's GEMMs run back to back, each output freshly allocated."""
    gemms = step_gemms(widths, batch)

    def all_step_gemms() -> None:
        for _, a, b in gemms:
            torch.mm(a, b)

    flops = sum(gemm_flops(a, b) for _, a, b in gemms)
    seconds = median_time(all_step_gemms, repeats, min_seconds=0.5)
    return flops / seconds / 1e9, flops / 1e9, seconds


def bench_gemm(widths: list[int], batch: int, square: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of torch.mm: a few single shapes, the step's GEMMs back to back, one big square."""
    gemms = step_gemms(widths, batch)
    rows = []
    for i in (0, 1, 2, -1):  # layer 1 fwd + grad W, layer 2 fwd, last layer's grad x
        role, a, b = gemms[i]
        t = median_time(lambda a=a, b=b: torch.mm(a, b), repeats, min_seconds=0.2)
        rows.append((role, f"{a.shape[0]}x{a.shape[1]} @ {b.shape[0]}x{b.shape[1]}", f"{t * 1e3:.2f}",
                     f"{gemm_flops(a, b) / t / 1e9:.1f}"))
    step_rate, step_gflop, t = step_gemm_rate(widths, batch, repeats)
    rows.append((f"all {len(gemms)} GEMMs of one step", f"{step_gflop:.2f} GFLOP in all", f"{t * 1e3:.2f}",
                 f"{step_rate:.1f}"))
    a, b = torch.randn(square, square), torch.randn(square, square)
    t = median_time(lambda: torch.mm(a, b), repeats, min_seconds=0.5)
    square_rate = gemm_flops(a, b) / t / 1e9
    rows.append((f"square {square}^3", f"{square}x{square} @ {square}x{square}", f"{t * 1e3:.2f}",
                 f"{square_rate:.1f}"))
    print_table(f"1. float32 GEMM rate, torch.mm, {torch.get_num_threads()} threads (median of {repeats})",
                ("GEMM", "shape", "ms", "GFLOP/s"), rows)
    return {"step_before": step_rate, "square": square_rate, "step_gemm_flops": step_gflop * 1e9}


# ---- 2. one-modality step rate ---------------------------------------------------------------------
def make_trainer(data: str, run_dir: Path, modality: str, cfg: SDMLConfig, threads: int) -> ModalityTrainer:
    """A ModalityTrainer on one modality of ``data`` with a fresh P in ``run_dir`` (no Ray)."""
    n_classes = open_dataset(data, validate=False).info.n_classes
    run_dir.mkdir(parents=True, exist_ok=True)
    projection = run_dir / "projection.arrow"
    if not projection.exists():
        save_projection(projection, create_projection(cfg.dim, n_classes, 0))
    job = ModalitySpec(run_dir=str(run_dir), modality=modality, config=cfg, dataset_uri=data,
                      n_classes=n_classes, num_threads=threads)
    return ModalityTrainer(job)


def naive_epoch(model: SDMLAutoencoder, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                P: torch.Tensor, lam: float, batch: int) -> float:
    """The plain loop: a fresh permutation slice + gather each step, loss.item() each step."""
    model.train()
    n, total = len(x), 0.0
    for _ in range(n // batch):
        idx = torch.randperm(n)[:batch]
        xb, yb = x[idx], y[idx]  # (B, dim), (B, c): a copy every step
        h, x_hat = model(xb)
        loss, _, _ = sdml_loss(x_hat, xb, h, P, yb, lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()  # a host sync every step (free on CPU, costly on GPU)
    return total / (n // batch)


def timed(run: Callable[[], object]) -> tuple[float, int]:
    """(seconds, minor page faults of this process) of one call."""
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    run()
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def step_worker(conn: Connection, data: str, run_dir: str, mode: str, threads: int) -> None:
    """Epochs on request, in a fresh process whose glibc malloc keeps its defaults.

    ``retain_freed_memory`` is process-wide and cannot be undone, so the loops that must run
    without it (the naive one, and the trainer's own loop as an ablation) live in their own process.
    """
    import scalable_xmr.sdml.trainer as sdml

    torch.set_num_threads(threads)
    sdml.retain_freed_memory = lambda: False  # this process keeps glibc's defaults
    trainer = make_trainer(data, Path(run_dir), "image", SDMLConfig(), threads)
    cfg = trainer.cfg
    if mode == "naive":
        opt = torch.optim.Adam(trainer.model.parameters(), lr=cfg.lr_for(trainer.job.modality),
                               betas=(0.5, 0.999))  # default flags: the single-tensor loop on CPU
        x, y = trainer.x["train"], trainer.data.labels["train"]

        def run() -> None:
            naive_epoch(trainer.model, opt, x, y, trainer.P, cfg.lam, cfg.batch_size)
    else:
        run = trainer.train_epoch
    while conn.recv() == "epoch":
        conn.send(timed(run))


def bench_step(data: str, tmp: Path, threads: int, repeats: int) -> tuple[ModalityTrainer, dict]:
    """Epoch times and page faults of the naive loop, train_epoch without / with retained memory."""
    ctx = mp.get_context("spawn")
    workers = {}
    for mode in ("naive", "trainer, glibc defaults"):
        parent, child = ctx.Pipe()
        args = (child, data, str(tmp / mode.split(",")[0]), mode, threads)
        proc = ctx.Process(target=step_worker, args=args, daemon=True)
        proc.start()
        workers[mode] = (parent, proc)
    trainer = make_trainer(data, tmp / "step", "image", SDMLConfig(), threads)
    timings: dict[str, list[tuple[float, int]]] = {mode: [] for mode in (*workers, "trainer")}
    try:
        for r in range(repeats + 1):  # round 0 warms up (allocator, optimizer state, MKL)
            for mode, (conn, _) in workers.items():  # interleaved: load changes hit all alike
                conn.send("epoch")
                result = conn.recv()
                if r:
                    timings[mode].append(result)
            result = timed(trainer.train_epoch)
            if r:
                timings["trainer"].append(result)
    finally:
        for conn, proc in workers.values():
            conn.send("stop")
            proc.join(timeout=60)
    val = median_time(trainer.val_label_loss, repeats)
    return trainer, {"timings": timings, "val": val}


def report_step(trainer: ModalityTrainer, measured: dict, gemm: dict[str, float], repeats: int) -> None:
    cfg, model = trainer.cfg, trainer.model
    steps = len(trainer.x["train"]) // cfg.batch_size
    flops = 6.0 * model.n_parameters() * cfg.batch_size  # model FLOPs of one step (6PB)
    med = {m: (statistics.median(t for t, _ in v), statistics.median(f for _, f in v))
           for m, v in measured["timings"].items()}
    val = measured["val"]
    rows = []
    for name, (seconds, faults) in (
        ("naive loop: default Adam, x[idx] + item() per step", med["naive"]),
        ("train_epoch steps, glibc malloc defaults (ablation)",
         (med["trainer, glibc defaults"][0] - val, med["trainer, glibc defaults"][1])),
        ("train_epoch steps (epoch - validation pass)", (med["trainer"][0] - val, med["trainer"][1])),
        ("train_epoch whole epoch (shuffle + steps + validation)", med["trainer"]),
    ):
        per_step = seconds / steps
        rate = flops / per_step / 1e9
        rows.append((name, f"{per_step * 1e3:.1f}", f"{rate:.1f}", f"{100 * rate / gemm['step']:.0f}%",
                     f"{100 * rate / gemm['square']:.0f}%", f"{faults / steps:,.0f}"))
    print_table(
        f"2. One-modality training step: {trainer.data.input_dim}-d image, batch {cfg.batch_size}, "
        f"{model.n_parameters():,} parameters, {steps} steps/epoch, {torch.get_num_threads()} threads "
        f"(median of {repeats} epochs, interleaved)",
        ("loop", "ms/step", "GFLOP/s (6PB)", "% of step-GEMM rate", "% of square-GEMM rate",
         "page faults/step"), rows)
    naive_step = med["naive"][0] / steps
    real_step = (med["trainer"][0] - val) / steps
    print(f"\nsteps of train_epoch vs naive loop: {naive_step / real_step:.2f}x faster; validation "
          f"pass {val * 1e3:.0f} ms/epoch.\n6PB = {flops / 1e9:.2f} GFLOP/step; the GEMMs autograd "
          f"actually runs = {gemm['step_gemm_flops'] / 1e9:.2f} GFLOP/step "
          f"({100 * gemm['step_gemm_flops'] / flops:.0f}% of 6PB: no gradient for the input). "
          f"step-GEMM rate = mean of before ({gemm['step_before']:.1f}) and after "
          f"({gemm['step_after']:.1f} GFLOP/s) this section.")


# ---- 3 + 4. strategies and Ray's overhead ----------------------------------------------------------
def run_strategy(data: str, run_dir: Path, strategy: str, cfg: SDMLConfig) -> dict:
    import ray

    from scalable_xmr.sdml.job import TrainRequest, train_sdml

    start = time.perf_counter()
    summary = train_sdml(TrainRequest(
        run_dir=str(run_dir), dataset_uri=data, sdml=cfg, resources=ResourceConfig(strategy=strategy),
        show_progress=False, tracking=TrackingConfig(enabled=False)))
    wall = time.perf_counter() - start
    results = list(summary.results.values())
    fits = [r.train_seconds for r in results]
    loops = [sum(h["seconds"] for h in r.history) for r in results]
    if strategy == "serial":  # one after another: the parts add up
        fit, loop = sum(fits), sum(loops)
    else:  # parallel actors overlap; joint reports one shared time for every modality
        fit, loop = max(fits), max(loops)
    # As the launcher shares CPUs out: parallel splits them over all actors, the others get them all.
    n = len(results) if strategy == "parallel" else 1
    share = max(math.floor(100 * ray.cluster_resources()["CPU"] / n) / 100, 0.01)
    placement = f"{n} x {max(1, int(share))} ({share:g} CPU each)"
    if strategy == "serial":
        placement = f"1 at a time x {max(1, int(share))}"
    return {"wall": wall, "fit": fit, "loop": loop, "epochs": cfg.epochs, "placement": placement}


def run_bare(data: str, run_dir: Path, cfg: SDMLConfig, threads: int) -> dict[str, float]:
    """The serial strategy's work with no Ray: ModalityTrainer(...).fit() per modality, in process."""
    start = time.perf_counter()
    build = fit = loop = 0.0
    for modality in open_dataset(data, validate=False).modalities:
        t0 = time.perf_counter()
        trainer = make_trainer(data, run_dir, modality, cfg, threads)
        build += time.perf_counter() - t0
        result = trainer.fit()
        fit += result.train_seconds
        loop += sum(h["seconds"] for h in result.history)
    return {"wall": time.perf_counter() - start, "fit": fit, "loop": loop, "build": build,
            "epochs": cfg.epochs}


def report_strategies(runs: dict[str, dict], bare: dict[str, float], ray_init: float) -> None:
    rows = []
    for name, r in runs.items():
        rows.append((name, r["placement"], f"{r['wall']:.1f}", f"{r['fit']:.1f}",
                     f"{r['wall'] - r['fit']:.1f}", f"{r['loop'] / r['epochs']:.2f}",
                     f"{r['wall'] / runs['parallel']['wall']:.2f}"))
    epochs = int(next(iter(runs.values()))["epochs"])
    print_table(
        f"3. Whole job (train_sdml), 5 modalities, {epochs} epochs, local Ray with 2 CPUs (Table 6 analogue)",
        ("strategy", "actors x torch threads", "wall s", "training s (fit in actors)", "outside training s",
         "training-loop s/epoch", "wall / parallel"), rows)
    serial = runs["serial"]
    rows = [
        ("bare PyTorch, one process", f"{bare['loop'] / bare['epochs']:.2f}", f"{bare['fit']:.1f}",
         f"{bare['wall'] - bare['fit']:.1f}", f"{bare['wall']:.1f}"),
        ("Ray job, serial strategy", f"{serial['loop'] / serial['epochs']:.2f}", f"{serial['fit']:.1f}",
         f"{serial['wall'] - serial['fit']:.1f}", f"{serial['wall']:.1f}"),
    ]
    print_table("4. Ray's overhead: same 5 modalities and epochs, serial",
                ("", "training-loop s/epoch", "fit s", "outside fit s", "wall s"), rows)
    print(f"\nper-epoch training time, Ray vs bare: {100 * (serial['loop'] / bare['loop'] - 1):+.1f}%; "
          f"whole fit(): {100 * (serial['fit'] / bare['fit'] - 1):+.1f}% (target <= +10%).\n"
          f"fixed costs: ray.init {ray_init:.1f} s (once per driver); the Ray job outside fit "
          f"{serial['wall'] - serial['fit']:.1f} s (actor start, data load, evaluation, plots) vs "
          f"bare outside fit {bare['wall'] - bare['fit']:.1f} s (data load {bare['build']:.1f} s, "
          f"no evaluation).")


def wait_for_free_cpus(cpus: int, timeout: float = 300.0) -> float:
    """Seconds until the local Ray has all ``cpus`` free again (killed actors release them late)."""
    import ray

    start = time.perf_counter()
    while ray.available_resources().get("CPU", 0) < cpus and time.perf_counter() - start < timeout:
        time.sleep(0.5)
    return time.perf_counter() - start


def bench_strategies(data: str, tmp: Path, cfg: SDMLConfig, threads: int, cpus: int) -> None:
    import shutil

    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    ray_init = time.perf_counter() - t0
    try:
        runs = {}
        for strategy in STRATEGIES:
            waited = wait_for_free_cpus(cpus)
            if waited > 1.0:
                print(f"(waited {waited:.0f} s for the previous run's actors to release their CPUs)")
            runs[strategy] = run_strategy(data, tmp / strategy, strategy, cfg)
            shutil.rmtree(tmp / strategy)  # models and checkpoints are big; keep the disk tidy
        bare = run_bare(data, tmp / "bare", cfg, threads)
    finally:
        ray.shutdown()
    report_strategies(runs, bare, ray_init)


# ---- main ------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny data and sizes: a smoke test")
    p.add_argument("--epochs", type=int, default=3, help="epochs per modality in sections 3-4")
    p.add_argument("--skip-strategies", action="store_true", help="only sections 1-2")
    p.add_argument("--repeats", type=int, default=5, help="repeats per timing (median)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    args = p.parse_args()
    if args.epochs < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--epochs, --repeats and --threads must be positive")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    scale, square, repeats = ("small", 256, 1) if args.quick else ("full", 2048, args.repeats)
    mode = ("mode", "quick (tiny data: numbers meaningless)" if args.quick else "full")
    print_info("Machine", [*machine_info(torch.get_num_threads()), mode])

    from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia

    with tempfile.TemporaryDirectory(prefix="train_speed-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        data = str(tmp / "xmedia")
        make_synthetic_xmedia(data, scale=scale, seed=0)
        print(f"\nSYNTHETIC XMedia-shaped data ({scale}) written in {time.perf_counter() - t0:.1f} s")
        dim = open_dataset(data).info.modalities["image"].dim
        widths, batch = [dim, 1024, 1024, 512, 1024, 1024, dim], SDMLConfig().batch_size
        gemm = bench_gemm(widths, batch, square, repeats)
        trainer, measured = bench_step(data, tmp, args.threads, repeats)
        gemm["step_after"] = step_gemm_rate(widths, batch, repeats)[0]
        gemm["step"] = (gemm["step_before"] + gemm["step_after"]) / 2
        report_step(trainer, measured, gemm, repeats)
        del trainer
        if not args.skip_strategies:
            # --quick: the small data's modalities have < 100 train rows
            cfg = SDMLConfig(epochs=args.epochs, batch_size=20 if args.quick else 100)
            bench_strategies(data, tmp, cfg, args.threads, args.cpus)


if __name__ == "__main__":
    main()
