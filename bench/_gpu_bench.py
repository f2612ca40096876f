"""The SDML parts of bench/gpu.sh, and its summary table (run by gpu.sh; not meant to be run alone).

    python bench/_gpu_bench.py --device cuda --json OUT/sdml.json   # GEMM rate, SDML step, XMedia job
    python bench/_gpu_bench.py --summary OUT                        # the Markdown table of OUT/*.json

1. float32 GEMM rate on the device: one large square GEMM and the GEMMs of one SDML training step
   of the 4096-d image network (bench/train_speed.py's ``step_gemms``, batch 100).
2. SDML step rate: ``ModalityTrainer.train_epoch`` of that network (as train_speed.py section 2),
   model FLOP/s = 6 x parameters x batch per step, against the step-GEMM rate.
3. The XMedia-shaped job (``train_sdml``, 5 modalities, ``--epochs``, default 200) with 5 actors
   sharing one GPU (``gpus_per_modality`` 0.2, the parallel strategy) against one actor at a time
   (the serial strategy, a whole GPU each), wall time and training time inside the actors.
``--smoke``: small data, 2 epochs, on the CPU (numbers meaningless; it checks that everything runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine_info, median_time
from train_speed import gemm_flops, make_trainer, step_gemms

from scalable_xmr.config import ResourceConfig, SDMLConfig, TrackingConfig


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rates(device: torch.device, square: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of one square GEMM and of one SDML step's GEMMs back to back, on ``device``."""
    a, b = torch.randn(square, square, device=device), torch.randn(square, square, device=device)

    def one_square() -> None:
        torch.mm(a, b)
        sync(device)

    t_square = median_time(one_square, repeats, min_seconds=0.5)
    widths = [4096, 1024, 1024, 512, 1024, 1024, 4096]  # train_speed.py's image network
    gemms = [(x.to(device), y.to(device)) for _, x, y in step_gemms(widths, 100)]

    def step() -> None:
        for x, y in gemms:
            torch.mm(x, y)
        sync(device)

    t_step = median_time(step, repeats, min_seconds=0.5)
    flops = sum(gemm_flops(x, y) for x, y in gemms)
    return {"square_gflops": gemm_flops(a, b) / t_square / 1e9, "square": square,
            "step_gemm_gflops": flops / t_step / 1e9}


def sdml_step(data: str, tmp: Path, device: torch.device, repeats: int) -> dict[str, float]:
    """ModalityTrainer.train_epoch of the image network on ``device`` (median of epochs)."""
    trainer = make_trainer(data, tmp / "step", "image", SDMLConfig(), torch.get_num_threads())
    trainer.train_epoch()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        trainer.train_epoch()
        sync(device)
        times.append(time.perf_counter() - start)
    steps = len(trainer.x["train"]) // trainer.cfg.batch_size
    per_step = statistics.median(times) / steps
    flops = 6.0 * trainer.model.n_parameters() * trainer.cfg.batch_size
    return {"ms_per_step": per_step * 1e3, "gflops": flops / per_step / 1e9, "steps": steps,
            "device": str(trainer.device)}


def xmedia_job(data: str, tmp: Path, epochs: int, batch: int, gpu_share: float,
               modalities: tuple[str, ...] | None = None) -> dict[str, dict]:
    """train_sdml, parallel (an actor per modality, ``gpu_share`` of a GPU each) vs serial (one
    actor at a time, a whole GPU)."""
    import ray

    from scalable_xmr.sdml.job import TrainRequest, train_sdml

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    runs = {}
    try:
        for strategy, gpus in (("parallel", gpu_share), ("serial", 1.0 if gpu_share else 0.0)):
            start = time.perf_counter()
            summary = train_sdml(TrainRequest(
                run_dir=str(tmp / strategy), dataset_uri=data,
                sdml=SDMLConfig(epochs=epochs, batch_size=batch), modalities=modalities,
                resources=ResourceConfig(strategy=strategy, gpus_per_modality=gpus), show_progress=False,
                tracking=TrackingConfig(enabled=False)))
            fits = [r.train_seconds for r in summary.results.values()]
            runs[strategy] = {"wall": time.perf_counter() - start, "gpus_per_actor": gpus,
                              "fit": sum(fits) if strategy == "serial" else max(fits)}
    finally:
        ray.shutdown()
    return runs


def measure(args: argparse.Namespace) -> int:
    from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/_gpu_bench.py: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    smoke = args.smoke
    result: dict = {"machine": dict(machine_info(torch.get_num_threads())), "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "smoke": smoke}
    start = time.perf_counter()

    def done(what: str) -> None:
        print(f"{what}: done at {time.perf_counter() - start:.0f} s", flush=True)

    result["gemm"] = gemm_rates(device, 256 if smoke else 8192, 1 if smoke else 5)
    done("GEMM rates")
    with tempfile.TemporaryDirectory(prefix="gpu_bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = str(tmp / "xmedia")
        make_synthetic_xmedia(data, scale="small" if smoke else "full", seed=0)
        done("synthetic XMedia-shaped data")
        result["sdml_step"] = sdml_step(data, tmp, device, 1 if smoke else 3)
        done("SDML step")
        result["sdml_step"]["pct_of_step_gemm"] = (
            100 * result["sdml_step"]["gflops"] / result["gemm"]["step_gemm_gflops"])
        epochs = 1 if smoke else args.epochs
        share = 0.0 if device.type == "cpu" else 0.2
        modalities = ("image", "text") if smoke else None  # smoke: 2 of the 5, 1 epoch
        runs = xmedia_job(data, tmp, epochs, 20 if smoke else 100, share, modalities)
        result["xmedia_job"] = {"epochs": epochs, "runs": runs, "actors": 2 if smoke else 5}
        done("XMedia-shaped job, both strategies")
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def summary(out: Path) -> int:
    """The Markdown table of everything gpu.sh measured (rows say what is missing)."""
    rows = []
    sdml = json.loads((out / "sdml.json").read_text()) if (out / "sdml.json").is_file() else None
    if sdml:
        g, s = sdml["gemm"], sdml["sdml_step"]
        rows += [(f"float32 GEMM, square {g['square']}^3", f"{g['square_gflops']:.0f} GFLOP/s", ""),
                 ("float32 GEMMs of one SDML step (4096-d net, batch 100)",
                  f"{g['step_gemm_gflops']:.0f} GFLOP/s", ""),
                 ("SDML step, ModalityTrainer.train_epoch", f"{s['gflops']:.0f} GFLOP/s (6PB)",
                  f"{s['ms_per_step']:.2f} ms/step, {s['pct_of_step_gemm']:.0f}% of the step-GEMM rate")]
        job = sdml["xmedia_job"]
        for strategy, label in (("parallel", f"{job['actors']} actors sharing the GPU"),
                                ("serial", "one actor at a time")):
            r = job["runs"][strategy]
            rows.append((f"XMedia-shaped job, {job['epochs']} epochs, {label} "
                         f"({r['gpus_per_actor']:g} GPU each)",
                         f"{r['wall']:.1f} s wall", f"{r['fit']:.1f} s training in the actors"))
        par, ser = job["runs"]["parallel"]["wall"], job["runs"]["serial"]["wall"]
        rows.append(("XMedia-shaped job, one at a time / shared", f"{ser / par:.2f}x", "wall time ratio"))
    else:
        rows.append(("GEMM rate, SDML step, XMedia-shaped job", "failed", "see the output above"))
    branch = json.loads((out / "branch.json").read_text()) if (out / "branch.json").is_file() else None
    for r in (branch or {}).get("steps", []):
        rows.append((f"branch step: {r['model']} (batch {r['batch']}), bench/branch_speed.py",
                     f"{r['gflop_step'] / r['step_s']:.0f} GFLOP/s",
                     f"{r['step_s'] * 1e3:.1f} ms/step, {100 * r['ratio']:.0f}% of the GEMM rate "
                     "for the same shapes"))
    if branch is None:
        rows.append(("branch step, bench/branch_speed.py", "failed", "see the output above"))
    status_file = out / "population.status"
    status = status_file.read_text().strip() if status_file.is_file() else "?"
    rows.append(("population sweep, bench/population_speed.py", status, "its own table is printed above"))
    rows += curve_rows(out / "curve.json")
    where = "smoke run on the CPU: numbers meaningless" if sdml and sdml["smoke"] else (sdml or {}).get("gpu")
    print(f"\n### bench/gpu.sh summary ({where})\n")
    print("| measurement | result | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def curve_rows(path: Path) -> list[tuple[str, str, str]]:
    """The data-parallel curve's rows (bench/train_scale.py --curve), one per W."""
    if not path.is_file():
        return [("data-parallel curve, bench/train_scale.py --curve", "failed", "see the output above")]
    c = json.loads(path.read_text())
    unit = "GPU" if c["device"] == "cuda" else "CPU"
    return [(f"data-parallel W={p['workers']} ({p['workers']} {unit}), bench/train_scale.py --curve",
             f"{p['rows_per_s']:,.0f} rows/s",
             f"scaling efficiency {100 * p['efficiency']:.0f}% ({c['rows']} x {c['dim']}, global batch "
             f"{c['batch']})") for p in c["points"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--epochs", type=int, default=200, help="epochs of the XMedia-shaped job (200)")
    p.add_argument("--smoke", action="store_true", help="tiny, on the CPU: checks that everything runs")
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--summary", help="print the summary table of this gpu.sh output directory")
    args = p.parse_args(argv)
    if args.summary:
        return summary(Path(args.summary))
    if not args.json:
        p.error("--json or --summary is required")
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
