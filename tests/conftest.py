"""Shared fixtures: one local Ray for the whole session, tiny synthetic datasets."""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# The fault-injection plan (scalable_xmr/faults.py): set before Ray starts so every actor sees it.
FAULT_PLAN = Path(tempfile.mkdtemp(prefix="xmr-faults-")) / "plan.json"
os.environ["XMR_FAULTS"] = str(FAULT_PLAN)
# A shell without job control starts background commands (`make test &`) with SIGINT ignored, and
# an ignored signal stays ignored across exec: every `xmr` the Ctrl-C tests start would then shrug
# off their SIGINT. Give this process (hence its children) the disposition of a foreground one.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def crash_after():
    """``crash_after({"image": 2})``: that task's process dies once after its epoch-2 checkpoint."""

    def plan(tasks: dict[str, int]) -> None:
        FAULT_PLAN.write_text(json.dumps(tasks))

    yield plan
    FAULT_PLAN.unlink(missing_ok=True)


def pytest_collection_modifyitems(config, items):
    """Everything under tests/e2e/ (jobs on a local Ray, Tune sweeps, the README) is the slow tier.

    Tests marked ``system`` need root and change the machine (packages, a user, an sshd, a mount):
    they run only when the -m expression names them (``make test-system`` is ``-m system``), so
    ``pytest``, ``make test`` and any other -m (``-m slow``) leave them out."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.slow)
    if re.search(r"\bsystem\b", config.option.markexpr or ""):
        return
    system = [item for item in items if item.get_closest_marker("system")]
    if system:
        config.hook.pytest_deselected(items=system)
        items[:] = [item for item in items if not item.get_closest_marker("system")]


LOCAL_RAY = {"address": "local", "num_cpus": 2, "include_dashboard": False, "log_to_driver": False,
             "logging_level": "ERROR"}


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(**LOCAL_RAY)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local_paused():
    """For a module that runs its own Ray cluster (tests/e2e/test_multinode.py): this process's Ray
    is shut down for the module and, if it was running, the session's local Ray is started again
    after it, so `ray_local` tests on either side of the module get the Ray they expect."""
    import ray

    was_running = ray.is_initialized()
    ray.shutdown()
    yield
    ray.shutdown()
    if was_running:
        ray.init(**LOCAL_RAY)


@pytest.fixture(scope="session")
def small_xmedia(tmp_path_factory) -> str:
    """Tiny XMedia-shaped dataset (5 modalities, 20 classes), built once per session."""
    from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia

    out = tmp_path_factory.mktemp("data") / "xmedia-small"
    make_synthetic_xmedia(str(out), scale="small", seed=0)
    return str(out)


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest (and deterministically) on one intra-op thread; restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- paired data for the branch-model tests (built once per session)
@pytest.fixture(scope="session")
def small_pairs(tmp_path_factory) -> str:
    """Synthetic paired data small enough for a 4-model job on 2 CPUs, with a 100-image test
    split so that chance R@10 stays near 10% (30 concepts: retrieval is learnable in few epochs)."""
    from scalable_xmr.data.paired import make_synthetic_pairs

    out = tmp_path_factory.mktemp("pairs") / "synthetic"
    make_synthetic_pairs(out, seed=5, n_train=200, n_val=50, n_test=100, n_regions=4, dim=32,
                         vocab_size=120, n_concepts=30)
    return str(out)


@pytest.fixture(scope="session")
def mfeat_pair_data(tmp_path_factory) -> str:
    """UCI mfeat (real): fou view as "image", pix view as dense "caption"; 1200/400/400."""
    from scalable_xmr.data.paired import mfeat_pairs

    out = tmp_path_factory.mktemp("pairs") / "mfeat"
    mfeat_pairs(out, view_a="fou", view_b="pix", seed=0)
    return str(out)


@pytest.fixture(scope="session")
def small_configs() -> dict[str, dict]:
    """Model configs of the same architectures, narrow enough for CPU tests."""
    return SMALL


SMALL = {
    "vse": {"embed_dim": 32, "word_dim": 16},
    "mtfn": {"rank": 8, "dim": 64, "word_dim": 16, "text_hidden": 64, "dropout": 0.0, "hinge": "sum"},
    "mmca": {"embed_dim": 16, "n_heads": 2, "n_filters": 8, "text_layers": 1, "max_len": 16,
             "dropout": 0.0, "hinge": "sum"},
    "vsa": {"embed_dim": 32, "word_dim": 16, "conv_channels": [16, 32], "max_len": 16},
}


@pytest.fixture(scope="session")
def chance_r10():
    return chance_r_at_k


def chance_r_at_k(n_images: int, per_image: int, k: int = 10) -> tuple[float, float]:
    """Chance R@k (%) of a random ranking: (i2t, t2i). I2T hits when any of the image's
    ``per_image`` captions is among k of ``n_images * per_image``; T2I when the image is in k."""
    from math import comb

    n_cap = n_images * per_image
    i2t = 1.0 - comb(n_cap - per_image, k) / comb(n_cap, k)
    return 100.0 * i2t, 100.0 * min(k, n_images) / n_images
