"""A finished SDML run made by hand (run.json, P, embeddings, metrics; no training), for the tests of
what jobs check before Ray starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scalable_xmr.config import SDMLConfig
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.sdml.evaluate import SDMLMetrics
from scalable_xmr.sdml.modality_spec import ModalitySpec
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
    SDMLMetrics(list(modalities), pairs, 0.5).write(store)
    return store.root


TINY_BRANCH = {  # tiny networks: these tests check search mechanics, not retrieval quality
    "vse": {"embed_dim": 16, "word_dim": 8},
    "mmca": {"embed_dim": 16, "n_heads": 2, "n_filters": 8, "text_layers": 1, "max_len": 16},
    "mtfn": {"rank": 2, "dim": 8, "word_dim": 8, "text_hidden": 8},
    "vsa": {"embed_dim": 16, "word_dim": 8, "conv_channels": (8, 16), "max_len": 16},
}


def fake_branch_run(run_dir: Path, data: str, models=("vse", "mmca", "mtfn")) -> str:
    """A finished branch run (run.json + models/<member>/model.pt), members trained one epoch
    each by ``branch.member.train_branch`` (the function the train-pairs actors run)."""
    from scalable_xmr.branch.config import PairTrainerConfig
    from scalable_xmr.branch.member import BranchSpec, train_branch

    store = RunStore(run_dir)
    store.root.mkdir(parents=True)
    members = {}
    for name in models:
        job = BranchSpec(out_dir=str(store.member_dir(name)), dataset_uri=data,
                        trainer=PairTrainerConfig(model=name, epochs=1, batch_size=10, lr=1e-3),
                        model_config=TINY_BRANCH[name], device="cpu", save_sims=False, ks=(1,), k_texts=(1,))
        train_branch(job)
        members[name] = {"status": "finished", "model": name}
    meta = RunMeta(kind="branch", dataset={"uri": data, "name": "synthetic-pairs"}, models=list(models),
                   members=members)
    meta.finish()
    store.write(meta)
    return str(store.root)


def modality_spec_for(root: Path, data: str, cfg: SDMLConfig, modality: str) -> ModalitySpec:
    """What an actor training ``modality`` of ``data`` is handed: a run directory under ``root`` with
    a seeded P (the data-parallel and streaming tests start a trainer from it, without a job)."""
    ds = open_dataset(data)
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    digest = save_projection(run / "projection.arrow", create_projection(cfg.dim, ds.info.n_classes, 0))
    return ModalitySpec(run_dir=str(run), modality=modality, config=cfg, dataset_uri=data,
                        n_classes=ds.info.n_classes, projection_sha256=digest, num_threads=1)
