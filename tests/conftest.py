"""Shared fixtures: one local Ray for the whole session, tiny synthetic datasets."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    yield ray
    ray.shutdown()


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
