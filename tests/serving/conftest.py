"""A tiny finished SDML run and a tiny pairs run, trained once per session without Ray.

The SDML run is made by the same library pieces ``xmr train`` runs (``sdml.job`` opens the run the
same way, each actor runs ``ModalityTrainer.fit``, ``sdml.job.finish_run`` evaluates and marks it
finished); only the Ray actors are left out, so these tests stay in the fast tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_runs import fake_branch_run

from scalable_xmr.config import SDMLConfig
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.sdml.job import finish_run, modality_entry
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.trainer import ModalityTrainer
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.projection import create_projection, save_projection
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.tracker import Tracker

TINY = SDMLConfig(dim=32, hidden=64, epochs=2, batch_size=20, checkpoint_every=2, lr=1e-3)
MODALITIES = ("image", "text", "audio")


def train_sdml_run(run_dir: Path, data: str, modalities=MODALITIES, cfg: SDMLConfig = TINY) -> str:
    ds = open_dataset(data)
    store = RunStore(run_dir)
    store.root.mkdir(parents=True)
    n_classes = ds.info.n_classes
    digest = save_projection(store.projection_path, create_projection(cfg.dim, n_classes, 0), seed=0)
    meta = RunMeta(kind="sdml",
                   dataset={"uri": data, "name": ds.info.name, "n_classes": n_classes,
                            "multi_label": ds.info.multi_label, "class_names": list(ds.info.class_names)},
                   projection={"file": "projection.arrow", "sha256": digest, "dim": cfg.dim,
                               "n_classes": n_classes, "seed": 0},
                   sdml=cfg.to_dict(), strategy="serial",
                   modalities={m: {"status": "pending", "config": cfg.to_dict()} for m in modalities})
    store.write(meta)
    results = {}
    for m in modalities:
        job = ModalitySpec(run_dir=str(store.root), modality=m, config=cfg, dataset_uri=data,
                          n_classes=n_classes, projection_sha256=digest, device="cpu")
        results[m] = ModalityTrainer(job).fit()
        meta.modalities[m].update(modality_entry(results[m]))
    tracker = Tracker(f"sqlite:///{run_dir.parent}/mlflow.db", "serving-tests", enabled=False)
    finish_run(store, meta, list(modalities), tracker, None, results, top_k=None)
    return str(store.root)


@pytest.fixture(scope="session")
def sdml_run(small_xmedia, tmp_path_factory) -> str:
    import torch

    torch.set_num_threads(1)
    return train_sdml_run(tmp_path_factory.mktemp("serving") / "run", small_xmedia)


@pytest.fixture(scope="session")
def branch_run(tmp_path_factory) -> tuple[str, str]:
    """(run directory, dataset) of a tiny branch run with a VSE, an MMCA and an MTFN member."""
    import torch

    from scalable_xmr.data.paired import make_synthetic_pairs

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving-pairs")
    data = str(make_synthetic_pairs(root / "data", seed=3, n_train=30, n_val=10, n_test=12, n_regions=3,
                                    dim=8, vocab_size=40, n_concepts=6))
    return fake_branch_run(root / "run", data), data


@pytest.fixture(scope="session")
def vsa_run(branch_run, tmp_path_factory) -> str:
    """A tiny branch run with one VSA member, on the branch run's dataset."""
    return fake_branch_run(tmp_path_factory.mktemp("serving-vsa") / "run", branch_run[1], models=("vsa",))
