"""A finished SDML run made by hand (run.json, P, embeddings, metrics; no training), for the tests of
what jobs check before Ray starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scalable_xmr.config import SDMLConfig
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.projection import create_projection, save_projection
from scalable_xmr.store.run_store import RunStore


def make_finished_run(root: Path, data: str, modalities: tuple[str, ...], sdml: SDMLConfig,
                      record_configs: bool = False, mlflow: dict | None = None) -> Path:
    """Random test/val embeddings of ``modalities`` against a seeded 32 x 20 P; model files are
    placeholders (no job loads them before its checks pass)."""
    ds = open_dataset(data, validate=False)
    store = RunStore(root)
    store.root.mkdir(parents=True)
    sha = save_projection(store.projection_path, create_projection(32, 20, seed=0), seed=0)
    rng = np.random.default_rng(0)
    for m in modalities:
        for split in ("val", "test"):
            d = ds.read_split(m, split)
            store.write_embeddings(m, split, d.ids, d.labels, rng.standard_normal((len(d), 32)))
        store.model_path(m).write_bytes(b"model " + m.encode())
    entry = {"status": "finished", **({"config": sdml.to_dict()} if record_configs else {})}
    store.write(RunMeta(
        kind="sdml", status="finished",
        dataset={"uri": data, "name": ds.info.name, "n_classes": 20, "multi_label": False,
                 "class_names": list(ds.info.class_names)},
        projection={"file": "projection.arrow", "sha256": sha, "dim": 32, "n_classes": 20, "seed": 0},
        sdml=sdml.to_dict(), strategy="parallel",
        modalities={m: dict(entry) for m in modalities}, mlflow=mlflow,
    ))
    pairs = {f"{q}-{t}": 0.5 for q in modalities for t in modalities if q != t}
    store.write_metrics({"modalities": list(modalities), "map": pairs, "map_mean": 0.5})
    return store.root
