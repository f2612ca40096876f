"""Time the vectorised re-rankers and R@K against straightforward loops.

    .venv/bin/python bench/rerank_speed.py            # 1,000 x 5,000 and 5,000 x 25,000
    .venv/bin/python bench/rerank_speed.py --quick    # tiny sizes, a smoke test

Similarities are synthetic and shaped like VSE-style test sets: N images with 5 captions each,
captions = their image's embedding + noise, cosine scores (float32). The loops
(tests/reference.py: one query at a time, stable NumPy argsorts) are timed on a subset of the
queries and extrapolated linearly to all of them (the loop's cost is the same for every query);
the vectorised functions always run on the whole matrix. Each timing is the median of a few
repeats. Before timing, the vectorised outputs are checked against the loops on the subset.
T2I re-ranking is timed with both neighbour-group variants (``groups="candidate"``, Eq. 15 as
written and the default, and ``groups="query"``; scalable_xmr/functional/rerank.py). The candidate loop
builds a text's group the first time its walk meets that text, so its per-query cost falls as
the subset grows and the extrapolation overstates it somewhat.
About 3-6 minutes on 2 CPU cores, peak memory ~4 GB (the 25,000 x 25,000 text-text matrix).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import median_time

from scalable_xmr.functional.rerank import T2I_GROUPS, rerank_i2t, rerank_t2i
from scalable_xmr.functional.retrieval import recall_at_k

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the loop references
from reference import (  # noqa: E402  (tests/reference.py, shared with the test suite)
    i2t_ranks_loop,
    rerank_i2t_loop,
    rerank_t2i_loop,
    stable_desc,
    t2i_ranks_loop,
)

CAPTIONS = 5


def make_similarities(n_img: int, seed: int = 0, dim: int = 64):
    """(sim (N, 5N), text_sim (5N, 5N)) float32 tensors: cosine scores of noisy captions."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n_img, dim, generator=g)
    cap = img.repeat_interleave(CAPTIONS, 0) + 1.5 * torch.randn(n_img * CAPTIONS, dim, generator=g)
    img = torch.nn.functional.normalize(img, dim=1)
    cap = torch.nn.functional.normalize(cap, dim=1)
    return img @ cap.T, cap @ cap.T


def bench_size(n_img: int, k: int, k_text: int, subset: dict[str, int], repeats: int) -> list:
    sim, text_sim = make_similarities(n_img)
    sim_np, text_np = sim.numpy(), text_sim.numpy()
    n_txt = sim.shape[1]
    size = f"{n_img:,} x {n_txt:,}"
    rng = np.random.default_rng(0)
    pick = {name: sorted(rng.choice(total, min(subset[name], total), replace=False).tolist())
            for name, total in (("i2t", n_img), ("t2i", n_txt), ("r_i2t", n_img),
                                ("r_t2i", n_txt))}

    # Correctness on the subset before timing anything.
    out = rerank_i2t(sim, k).numpy()
    ref = rerank_i2t_loop(sim_np, k, pick["i2t"])
    assert all(stable_desc(out[i]).tolist() == ref[i] for i in pick["i2t"]), "i2t mismatch"
    for groups in T2I_GROUPS:
        out = rerank_t2i(sim, k, text_sim, k_text, groups=groups).numpy()
        ref = rerank_t2i_loop(sim_np, k, text_np, k_text, pick["t2i"], groups=groups)
        assert all(stable_desc(out[:, t]).tolist() == ref[t] for t in pick["t2i"]), f"t2i {groups}"

    rows = []

    def add(task, fast, loop, n_sub, n_all):
        loop_all = loop / n_sub * n_all
        rows.append((task, size, fast, loop_all, f"{n_sub:,}/{n_all:,}", loop_all / fast))

    add(f"rerank_i2t K={k}", median_time(lambda: rerank_i2t(sim, k), repeats),
        median_time(lambda: rerank_i2t_loop(sim_np, k, pick["i2t"]), repeats),
        len(pick["i2t"]), n_img)
    for groups in T2I_GROUPS:
        add(f"rerank_t2i K={k} K'={k_text} groups={groups}",
            median_time(lambda g=groups: rerank_t2i(sim, k, text_sim, k_text, groups=g), repeats),
            median_time(lambda g=groups: rerank_t2i_loop(sim_np, k, text_np, k_text, pick["t2i"],
                                                         groups=g), repeats),
            len(pick["t2i"]), n_txt)
    fast = median_time(lambda: recall_at_k(sim, CAPTIONS), repeats)
    loop_i2t = median_time(lambda: i2t_ranks_loop(sim_np, CAPTIONS, pick["r_i2t"]), repeats)
    loop_t2i = median_time(lambda: t2i_ranks_loop(sim_np, CAPTIONS, pick["r_t2i"]), repeats)
    loop_all = loop_i2t / len(pick["r_i2t"]) * n_img + loop_t2i / len(pick["r_t2i"]) * n_txt
    rows.append(("recall_at_k (i2t+t2i)", size, fast, loop_all,
                 f"{len(pick['r_i2t']):,}+{len(pick['r_t2i']):,}", loop_all / fast))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    k, k_text = 10, 4
    if args.quick:
        plan = [(40, {"i2t": 10, "t2i": 10, "r_i2t": 10, "r_t2i": 20})]
    else:
        plan = [
            (1000, {"i2t": 200, "t2i": 200, "r_i2t": 1000, "r_t2i": 5000}),
            (5000, {"i2t": 100, "t2i": 40, "r_i2t": 500, "r_t2i": 2500}),
        ]
    t_start = time.perf_counter()
    rows = [row for n_img, subset in plan for row in bench_size(n_img, k, k_text, subset,
                                                                 args.repeats)]
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {args.threads} threads, float32, median of "
          f"{args.repeats}; loop = tests/reference.py on a subset of queries (column 'loop on'),"
          f" extrapolated linearly to all queries; load average at the end {load}"
          f" on {os.cpu_count()} cores")
    header = ("task", "size (img x txt)", "vectorised s", "loop s (extrap.)", "loop on", "speed-up")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for task, size, fast, loop, basis, ratio in rows:
        print(f"| {task} | {size} | {fast:.3f} | {loop:.3g} | {basis} | {ratio:,.0f}x |")
    print(f"total bench time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
