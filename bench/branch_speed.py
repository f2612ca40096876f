"""Branch models' training speed: each model's step in model FLOP/s against this machine's GEMM rate
for the same shapes, one whole epoch, checkpoint sizes, and where the step's time goes.

    .venv/bin/python bench/branch_speed.py                       # all four models, default sizes
    .venv/bin/python bench/branch_speed.py --models vse,mtfn --profile
    .venv/bin/python bench/branch_speed.py --smoke               # tiny sizes: seconds, numbers meaningless
    .venv/bin/python bench/branch_speed.py --device cuda --models mtfn --no-epoch

In one run, on the default synthetic pairs (``xmr data synthetic-pairs`` defaults: 1,000 train
images x 5 captions, 8 regions of 64-d, captions of 4-12 tokens; generated into a temporary
directory unless ``--data`` names a paired dataset), for each model at its default size and its
paper's batch size:

1. Step rate: ``--steps`` training steps (``PairTrainer.train_step``: forward, loss, backward,
   gradient clipping, Adam) on a fixed set of batches, against the same batches' GEMMs
   (bench/_branch_gemms.py: what is counted and why) run back to back with torch.mm / torch.bmm,
   interleaved round by round so load drift hits both alike. "% of GEMM rate" = GEMM time /
   step time for the same FLOPs, each the best of its rounds. On the CPU both are this
   process's CPU time (``time.process_time``), not wall time: on a shared machine a process
   waits for the cores, and that wait is not the step's cost (use ``--threads 1``: with more,
   OpenMP threads spinning at barriers count as CPU time too). On CUDA: wall time, synchronised.
2. ``--profile``: the operators that take the step's time (torch.profiler, self time).
3. One whole epoch (``train_branch``, the job's own function: epoch = training + validation;
   MTFN also one text-text epoch), and the sizes of the files it writes: model.pt and
   checkpoints/last.pt (what a resume reads).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _branch_gemms import run_gemms, step_gemms
from _common import machine_info, print_info, print_table

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.member import BranchSpec, train_branch
from scalable_xmr.branch.trainer import PairTrainer
from scalable_xmr.data.paired import make_synthetic_pairs, open_paired_dataset
from scalable_xmr.models.registry import BRANCH_MODELS, branch_config

# Tiny sizes for --smoke: every code path, in seconds.
SMOKE_MODELS = {
    "vse": {"embed_dim": 16, "word_dim": 8},
    "mtfn": {"rank": 2, "dim": 16, "word_dim": 8, "text_hidden": 16},
    "vsa": {"embed_dim": 16, "word_dim": 8, "conv_channels": [8, 16]},
    "mmca": {"embed_dim": 16, "n_heads": 2, "n_filters": 8, "text_layers": 1},
}
SMOKE_DATA = {"n_train": 24, "n_val": 6, "n_test": 6, "n_regions": 4, "dim": 8, "vocab_size": 40,
              "n_concepts": 5}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_step(model: str, data: str, model_values: dict, batch_size: int | None, steps: int,
               repeats: int, device: torch.device, profile: bool) -> dict:
    """Step time vs the same GEMMs' time, interleaved; optionally a profile of one round."""
    ds = open_paired_dataset(data)
    cfg = PairTrainerConfig(model=model, epochs=1, batch_size=batch_size)
    trainer = PairTrainer(cfg, branch_config(model, model_values), ds.read_split("train"), None, device)
    train = trainer.train_data
    perm = torch.randperm(train.n_captions, generator=torch.Generator().manual_seed(0)).to(device)
    bs = cfg.batch_size
    n_batches = min(steps, train.n_captions // bs)
    batches = [perm[i * bs : (i + 1) * bs] for i in range(n_batches)]
    image_shape = tuple(train.images.shape[1:])
    width = int(train.texts.shape[1])
    gemms = [g for idx in batches
             for g in step_gemms(trainer.model, train.lengths[idx].tolist(), image_shape, width)]
    flops = sum(g.flops for g in gemms)
    run_all_gemms = run_gemms(gemms, device)

    def run_steps() -> None:
        for idx in batches:
            trainer.train_step(idx)
        sync(device)

    def timed(fn) -> float:  # seconds of this process's CPU time (CPU) or of wall (CUDA)
        clock = time.perf_counter if device.type == "cuda" else time.process_time
        start = clock()
        fn()
        sync(device)
        return clock() - start

    run_steps()  # warm-up: allocator, Adam's state, BLAS
    run_all_gemms()
    step_s, gemm_s = [], []
    for _ in range(repeats):
        step_s.append(timed(run_steps))
        gemm_s.append(timed(run_all_gemms))
    top = profile_round(run_steps, device) if profile else []
    n_params = sum(p.numel() for p in trainer.model.parameters())
    trained = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    return {"model": model, "batch": bs, "steps": n_batches, "params": n_params, "trained": trained,
            "gflop_step": flops / n_batches / 1e9, "step_s": min(step_s) / n_batches,
            "gemm_s": min(gemm_s) / n_batches, "ratio": min(gemm_s) / min(step_s), "top": top}


def profile_round(run_steps, device: torch.device, n: int = 8) -> list[tuple[str, float, int]]:
    """(operator, % of self time, calls) of the ``n`` operators with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run_steps()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [(e.key, 100 * getattr(e, key) / total, e.count) for e in events[:n]]


def bench_epoch(model: str, data: str, model_values: dict, batch_size: int | None, out: Path,
                device: torch.device, threads: int) -> dict:
    """One epoch through the job's own function (MTFN: + one text-text epoch); file sizes."""
    torch.set_num_threads(threads)
    text_epochs = 1 if BRANCH_MODELS[model][0].has_text_branch else 0
    cfg = PairTrainerConfig(model=model, epochs=1, text_epochs=text_epochs, batch_size=batch_size)
    job = BranchSpec(out_dir=str(out), dataset_uri=data, trainer=cfg, model_config=model_values,
                    device=str(device), save_sims=False, score_test=False)
    result = train_branch(job)
    sizes = {name: (out / name).stat().st_size for name in ("model.pt", "checkpoints/last.pt")}
    return {"model": model, "epochs": [(h["stage"], h["seconds"]) for h in result.history], **sizes}


def report(steps: list[dict], epochs: list[dict], device: torch.device) -> None:
    rows = [(r["model"], r["batch"], f"{r['params'] / 1e6:.1f}M ({r['trained'] / 1e6:.1f}M trained)",
             f"{r['gflop_step']:.2f}", f"{r['step_s'] * 1e3:.0f}", f"{r['gflop_step'] / r['step_s']:.1f}",
             f"{r['gflop_step'] / r['gemm_s']:.1f}", f"{100 * r['ratio']:.0f}%") for r in steps]
    where = f"{torch.get_num_threads()} threads, CPU time" if device.type == "cpu" else f"{device}, wall"
    print_table(f"1. Branch-model training step, {where} (best of rounds of {steps[0]['steps']} steps, "
                "interleaved with the same GEMMs)",
                ("model", "batch", "parameters", "GFLOP/step", "ms/step", "model GFLOP/s",
                 "GEMM GFLOP/s, same shapes", "% of GEMM rate"), rows)
    for r in steps:
        if r["top"]:
            print_table(f"2. Where {r['model']}'s step goes (torch.profiler, self time)",
                        ("operator", "% of self time", "calls"),
                        [(k, f"{p:.1f}", c) for k, p, c in r["top"]])
    if epochs:
        rows = [(r["model"], " + ".join(f"{s:.1f} ({stage})" for stage, s in r["epochs"]),
                 f"{r['model.pt'] / 1e6:.1f}", f"{r['checkpoints/last.pt'] / 1e6:.1f}") for r in epochs]
        print_table("3. One whole epoch (train_branch: training + validation) and the files it writes",
                    ("model", "epoch s (stage)", "model.pt MB", "checkpoints/last.pt MB"), rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="vse,mtfn,vsa,mmca", help="comma-separated branch models")
    p.add_argument("--data", help="paired dataset (default: synthetic pairs, CLI defaults, in a temp dir)")
    p.add_argument("--steps", type=int, default=6, help="training steps per timed round")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    p.add_argument("--epoch-models", default=None,
                   help="models whose whole epoch is timed (default: --models); '' for none")
    p.add_argument("--no-epoch", action="store_true", help="skip section 3 (same as --epoch-models '')")
    p.add_argument("--profile", action="store_true", help="section 2: profile one round per model")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    p.add_argument("--smoke", action="store_true", help="tiny data and models (numbers meaningless)")
    p.add_argument("--json", help="also write the measurements to this JSON file (bench/gpu.sh)")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    epoch_models = models if args.epoch_models is None else [m for m in args.epoch_models.split(",") if m]
    if args.no_epoch:
        epoch_models = []
    unknown = sorted(set(models + epoch_models) - set(BRANCH_MODELS))
    if unknown or args.steps < 1 or args.repeats < 1 or args.threads < 1:
        p.error(f"unknown models {unknown}" if unknown else "--steps, --repeats, --threads must be >= 1")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    steps, repeats = (2, 1) if args.smoke else (args.steps, args.repeats)
    mode = "smoke (tiny data and models: numbers meaningless)" if args.smoke else "default sizes"
    print_info("Machine", [*machine_info(torch.get_num_threads()), ("device", str(device)), ("mode", mode)])
    with tempfile.TemporaryDirectory(prefix="branch_speed-") as tmp_name:
        tmp = Path(tmp_name)
        data = args.data
        if data is None:
            data = str(make_synthetic_pairs(tmp / "pairs", **(SMOKE_DATA if args.smoke else {})))
        step_rows, epoch_rows = [], []
        for model in models:
            values = SMOKE_MODELS[model] if args.smoke else {}
            batch = 8 if args.smoke else None
            row = bench_step(model, data, values, batch, steps, repeats, device, args.profile)
            step_rows.append(row)
            print(f"{model}: {row['step_s'] * 1e3:.0f} ms/step, {100 * row['ratio']:.0f}% of the GEMM rate",
                  flush=True)
            gc.collect()
        for model in epoch_models:
            values = SMOKE_MODELS[model] if args.smoke else {}
            batch = 8 if args.smoke else None
            epoch_rows.append(bench_epoch(model, data, values, batch, tmp / f"run-{model}", device,
                                          args.threads))
            print(f"{model}: epoch {epoch_rows[-1]['epochs']}", flush=True)
            gc.collect()
        report(step_rows, epoch_rows, device)
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": step_rows, "epochs": epoch_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
