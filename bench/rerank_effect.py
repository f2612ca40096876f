"""Does cross-modal re-ranking (MTFN-RR §3.2) help? Plain vs re-ranked test R@1 over seeds.

    .venv/bin/python bench/rerank_effect.py                 # 5 seeds, both data settings, ~5 min
    .venv/bin/python bench/rerank_effect.py --seeds 10
    .venv/bin/python bench/rerank_effect.py --quick         # 2 seeds, 1 setting, tiny training

For each seed s, the synthetic paired data (generator seed s) is made, then VSE and MTFN are trained
with network seed s through the same function the train-pairs job's actors run
(``branch.member.train_branch``): K (I2T) and K, K' (T2I) are chosen on the validation split and
applied once to test. The T2I figures are given for both neighbour groups: ``candidate`` (Eq. 15,
the default; what train_branch chose) and ``query`` (the variant), the latter re-selected on val from
the stored matrices (``branch.evaluate``). Per model and direction the table gives the mean and
standard deviation over seeds of plain and re-ranked R@1, the mean difference, and on how many seeds
re-ranking was better / equal / worse. Whatever it shows is what BENCHMARKS.md reports.

Data settings (NOT real data; ``scalable_xmr.data.paired.make_synthetic_pairs``):
- ``default``: the ``xmr data synthetic-pairs`` defaults (1,000 / 100 / 100 images, 5 captions each,
  20 latent concepts);
- ``hubs``: 400 / 200 / 200 images, 30 concepts, 2-3 per image, so images share concepts and some
  captions become hubs (the case re-ranking is designed for; MTFN-RR Fig. 7a).
Models are the narrow CPU configurations of the test suite with a short fixed schedule (batch 32,
lr 5e-3, no decay; VSE 6 epochs, MTFN 12 + 1 text-text epoch), not the papers' full schedules.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine_info, print_info, print_table

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.evaluate import (
    rerank_grid,
    rerank_grid_for,
    reranked_recall,
    select_rerank,
)
from scalable_xmr.branch.member import BranchSpec, train_branch
from scalable_xmr.branch.member_scores import sims_path
from scalable_xmr.data.paired import make_synthetic_pairs

SETTINGS = {
    "default": dict(n_train=1000, n_val=100, n_test=100),
    "hubs": dict(n_train=400, n_val=200, n_test=200, n_regions=4, dim=32, vocab_size=120, n_concepts=30),
}
MODELS = {  # model -> (epochs, text_epochs, model config)
    "vse": (6, 0, {"embed_dim": 32, "word_dim": 16}),
    "mtfn": (12, 1, {"rank": 8, "dim": 64, "word_dim": 16, "text_hidden": 64, "dropout": 0.0,
                     "hinge": "sum"}),
}
PER_IMAGE = 5


def query_groups_r1(out_dir: Path) -> float:
    """Test t2i R@1 with the query-group variant, K and K' re-selected on val from stored matrices."""
    import numpy as np

    val, val_text = np.load(sims_path(out_dir, "val")), np.load(sims_path(out_dir, "val", text=True))
    grid = rerank_grid(val, val_text, PER_IMAGE, rerank_grid_for(*val.shape), t2i_groups="query")
    choice = select_rerank(grid)
    test, test_text = np.load(sims_path(out_dir, "test")), np.load(sims_path(out_dir, "test", text=True))
    return reranked_recall(test, test_text, PER_IMAGE, choice, t2i_groups="query")["t2i@1"]


def run_one(setting: str, model: str, seed: int, work: Path, quick: bool) -> dict[str, float]:
    data = work / f"{setting}-{seed}"
    if not data.exists():
        make_synthetic_pairs(data, seed=seed, **SETTINGS[setting])
    epochs, text_epochs, config = MODELS[model]
    if quick:
        epochs, text_epochs = 1, min(text_epochs, 1)
    cfg = PairTrainerConfig(model=model, epochs=epochs, text_epochs=text_epochs, batch_size=32, lr=5e-3,
                            lr_decay_epochs=0, seed=seed)
    out = work / f"{setting}-{seed}-{model}"
    result = train_branch(BranchSpec(out_dir=str(out), dataset_uri=str(data), trainer=cfg,
                                    model_config=config, num_threads=1))
    plain, rr = result.test["plain"], result.test["rerank"]
    return {"i2t_plain": plain["i2t@1"], "i2t_rerank": rr["i2t@1"], "t2i_plain": plain["t2i@1"],
            "t2i_rerank": rr["t2i@1"], "t2i_rerank_query": query_groups_r1(out),
            "k_i2t": result.choice["k_i2t"], "k_t2i": result.choice["k_t2i"],
            "k_text": result.choice["k_text"]}


def summary_row(name: str, plain: list[float], rerank: list[float]) -> list[str]:
    def ms(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.1f} ± {sd:.1f}"

    diff = [r - p for p, r in zip(plain, rerank, strict=True)]
    better, worse = sum(d > 0 for d in diff), sum(d < 0 for d in diff)
    return [name, ms(plain), ms(rerank), f"{statistics.mean(diff):+.1f}",
            f"{better} / {len(diff) - better - worse} / {worse}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds per setting and model (default 5)")
    p.add_argument("--setting", action="append", choices=sorted(SETTINGS),
                   help="data setting (repeatable; default: both)")
    p.add_argument("--quick", action="store_true", help="2 seeds, 1 epoch, the hubs setting: a smoke run")
    args = p.parse_args()
    seeds = 2 if args.quick else args.seeds
    settings = ["hubs"] if args.quick else (args.setting or list(SETTINGS))
    print_info("Machine", machine_info(1))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings:
            rows, per_seed = [], []
            for model in MODELS:
                res = [run_one(setting, model, s, Path(tmp), args.quick) for s in range(seeds)]
                col = {k: [r[k] for r in res] for k in res[0]}
                rows.append(summary_row(f"{model} i2t R@1", col["i2t_plain"], col["i2t_rerank"]))
                rows.append(summary_row(f"{model} t2i R@1 (Eq. 15 groups)", col["t2i_plain"],
                                        col["t2i_rerank"]))
                rows.append(summary_row(f"{model} t2i R@1 (query groups)", col["t2i_plain"],
                                        col["t2i_rerank_query"]))
                per_seed += [[model, s, f"{r['i2t_plain']:.1f}", f"{r['i2t_rerank']:.1f}", r["k_i2t"],
                              f"{r['t2i_plain']:.1f}", f"{r['t2i_rerank']:.1f}", r["k_t2i"], r["k_text"],
                              f"{r['t2i_rerank_query']:.1f}"] for s, r in enumerate(res)]
            print_table(f"Re-ranking on test, setting '{setting}', {seeds} seeds (mean ± sd)",
                        ["model / direction", "plain", "re-ranked", "mean diff", "better / equal / worse"],
                        rows)
            print_table(f"Per seed, setting '{setting}'",
                        ["model", "seed", "i2t plain", "i2t rr", "K", "t2i plain", "t2i rr", "K", "K'",
                         "t2i rr (query)"], per_seed)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
