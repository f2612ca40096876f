"""train_branch (the function actors and Tune trials call): target wiring, text-text similarity,
resume rules, ensembles; no Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.member import BranchResult, BranchSpec, train_branch
from scalable_xmr.branch.member_scores import sims_path
from scalable_xmr.branch.report import evaluate_ensemble
from scalable_xmr.branch.scoring import PairTensors, text_cosine_matrix
from scalable_xmr.branch.splits import remap_tokens
from scalable_xmr.branch.trainer import PairTrainer
from scalable_xmr.data.paired import make_synthetic_pairs, open_paired_dataset
from scalable_xmr.errors import InputError
from scalable_xmr.models.registry import branch_config, build_branch_model

TINY_VSE = {"embed_dim": 8, "word_dim": 4}
TINY_VSA = {"embed_dim": 8, "word_dim": 4, "conv_channels": (4, 8), "max_len": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    src = make_synthetic_pairs(root / "src", seed=1, n_train=20, n_val=6, n_test=6, n_regions=3, dim=8,
                               vocab_size=40, n_concepts=6)
    other = make_synthetic_pairs(root / "other", seed=2, n_train=7, n_val=0, n_test=0, n_regions=3, dim=8,
                                 vocab_size=45, n_concepts=6)
    return src, other


def test_remap_tokens_by_word():
    from dataclasses import make_dataclass

    Split = make_dataclass("Split", [("tokens", object), ("vocab_size", int)])  # the fields it reads
    ds_split = Split(np.array([[2, 3], [3, 0]]), 4)
    out = remap_tokens(ds_split, ["<pad>", "<unk>", "a", "b"], ["<pad>", "<unk>", "b", "c"])
    np.testing.assert_array_equal(out.tokens, [[1, 2], [2, 0]])  # a -> <unk>, b -> 2, padding stays
    assert out.vocab_size == 4


def test_target_batches_reach_extra_loss(tiny):
    src, other = tiny
    ds, tds = open_paired_dataset(src), open_paired_dataset(other)
    train = ds.read_split("train")
    target = remap_tokens(tds.read_split("train"), tds.vocab, ds.vocab)
    cfg = PairTrainerConfig(model="vsa", epochs=1, batch_size=16, lr=1e-3)
    trainer = PairTrainer(cfg, branch_config("vsa", TINY_VSA), train, None, target_split=target)
    seen = []
    original = trainer.model.extra_loss

    def spy(images, tokens, lengths, img_repr, txt_repr, target=None):
        seen.append((len(images), {k: tuple(v.shape) for k, v in target.items()}, target))
        return original(images, tokens, lengths, img_repr, txt_repr, target=target)

    trainer.model.extra_loss = spy
    trainer.fit()
    assert [n for n, _, _ in seen] == [16, 16, 16, 16, 16, 16, 4]  # 100 captions in batches of 16
    n, shapes, batch = seen[0]
    assert shapes["images"] == (16, 3, 8) and shapes["lengths"] == (16,) and shapes["tokens"][0] == 16
    # every target caption and image drawn is one of the target set's (never its pairing)
    data = PairTensors.from_split(target)
    for row in batch["images"]:
        assert any(torch.equal(row, img) for img in data.images)
    assert int(batch["tokens"].max()) < len(ds.vocab)


def test_target_split_is_checked(tiny):
    src, other = tiny
    ds, tds = open_paired_dataset(src), open_paired_dataset(other)
    train, raw = ds.read_split("train"), tds.read_split("train")
    cfg = PairTrainerConfig(model="vsa", epochs=1)
    with pytest.raises(InputError, match="vocabulary of 45 tokens differs from train's 40"):
        PairTrainer(cfg, branch_config("vsa", TINY_VSA), train, target_split=raw)
    from dataclasses import replace

    wide = replace(remap_tokens(raw, tds.vocab, ds.vocab), images=np.zeros((7, 3, 5), np.float32))
    with pytest.raises(InputError, match=r"target_split: image arrays \(3, 5\) differ from train \(3, 8\)"):
        PairTrainer(cfg, branch_config("vsa", TINY_VSA), train, target_split=wide)


@pytest.mark.parametrize("name, config", [("vse", TINY_VSE),
                                          ("mmca", {"embed_dim": 8, "n_heads": 2, "n_filters": 4,
                                                    "text_layers": 1})])
def test_text_cosine_matrix_against_one_caption_at_a_time(tiny, name, config):
    val = open_paired_dataset(tiny[0]).read_split("val")
    torch.manual_seed(0)
    model = build_branch_model(name, branch_config(name, config), val.vocab_size, val.image_dim).eval()
    got = text_cosine_matrix(model, val, chunk=7).numpy()
    with torch.no_grad():
        vecs = []
        for j in range(val.n_captions):
            tokens = torch.as_tensor(val.tokens[j : j + 1, : val.lengths[j]])
            rep = model.encode_texts(tokens, torch.as_tensor(val.lengths[j : j + 1]))
            vecs.append((rep[0] if isinstance(rep, tuple) else rep)[0].numpy().astype(np.float64))
    emb = np.stack(vecs) / np.linalg.norm(vecs, axis=1, keepdims=True)
    np.testing.assert_allclose(got, emb @ emb.T, atol=1e-5)
    assert got.shape == (30, 30)


def _job(out, data, **kw):
    cfg = PairTrainerConfig(**{"model": "vse", "epochs": 2, "batch_size": 16, "lr": 1e-3, **kw})
    return BranchSpec(out_dir=str(out), dataset_uri=str(data), trainer=cfg, model_config=TINY_VSE, ks=(1, 3))


def test_train_branch_outputs_and_resume_rules(tiny, tmp_path):
    records = []
    first = train_branch(_job(tmp_path / "m", tiny[0]), on_epoch=records.append)
    assert [r["checkpointed"] for r in records] == [True, True] and first.resumed_at_epoch == []
    assert [g["k"] for g in first.grid["i2t"]] == [1, 3]  # the K values given
    saved = json.loads((tmp_path / "m" / "result.json").read_text())
    assert saved["test"]["plain"] == first.test["plain"] and saved["choice"] == first.choice
    assert BranchResult.read(tmp_path / "m").to_json() == json.loads(json.dumps(first.to_json()))
    assert np.load(sims_path(tmp_path / "m", "test")).shape == (6, 30)
    # Same settings: the finished checkpoint is picked up, no epoch runs again.
    again = train_branch(_job(tmp_path / "m", tiny[0]), on_epoch=records.append)
    assert again.resumed_at_epoch == [2] and len(records) == 2
    assert again.test["plain"] == pytest.approx(first.test["plain"])
    with pytest.raises(InputError, match="checkpoint was written with other settings"):
        train_branch(_job(tmp_path / "m", tiny[0], lr=5e-3))


@pytest.mark.parametrize("kw, match", [
    ({"model_config": {"embed_dimm": 3}}, "unknown key 'embed_dimm'"),
    ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1"),
])
def test_branch_job_rejects_bad_settings(kw, match):
    with pytest.raises(InputError, match=match):
        BranchSpec(**{"out_dir": "/x", "dataset_uri": "/y", "trainer": PairTrainerConfig(model="vse"), **kw})


def test_evaluate_ensemble_averages_member_sims(tmp_path):
    rng = np.random.default_rng(0)
    dirs = []
    for m in range(2):
        d = tmp_path / f"m{m}"
        for split, shape in (("val", (4, 8)), ("test", (3, 6))):
            sims_path(d, split).parent.mkdir(parents=True, exist_ok=True)
            np.save(sims_path(d, split), rng.random(shape).astype(np.float32))
            np.save(sims_path(d, split, text=True), rng.random((shape[1], shape[1])).astype(np.float32))
        dirs.append(str(d))
    out = evaluate_ensemble("vse", dirs, str(tmp_path / "ens"), (2, 2), ks=(1,), k_texts=(0,))
    mean = (np.load(sims_path(dirs[0], "test")) + np.load(sims_path(dirs[1], "test"))) / 2
    np.testing.assert_allclose(np.load(sims_path(tmp_path / "ens", "test")), mean, rtol=1e-6)
    best = np.argmax(mean, axis=1) // 2 == np.arange(3)
    assert out["test"]["plain"]["i2t@1"] == pytest.approx(100 * best.mean())
    assert out["choice"] == {"k_i2t": 1, "k_t2i": 1, "k_text": 0}
    assert json.loads((tmp_path / "ens" / "ensemble.json").read_text())["members"] == dirs
    (tmp_path / "m1" / "sims" / "val.npy").unlink()
    with pytest.raises(InputError, match="similarity matrix not found"):
        evaluate_ensemble("vse", dirs, str(tmp_path / "ens2"), (2, 2))


# result.json as train_branch wrote it before it recorded t2i_groups (and before stopped_early)
OLD_RESULT_JSON = """{
  "name": "vse", "model": "vse", "seed": 0, "out_dir": "/runs/r/models/vse",
  "history": [{"epoch": 1, "stage": "image_text", "loss": 3.2, "lr": 0.0002, "val_score": 41.0,
               "is_best": true, "seconds": 1.5, "val_rsum": 41.0}],
  "best_epoch": {"image_text": 1, "text_text": null},
  "val": {"i2t@1": 5.0, "i2t@5": 10.0, "i2t@10": 20.0, "t2i@1": 1.0, "t2i@5": 2.0, "t2i@10": 3.0},
  "test": {"plain": {"i2t@1": 4.0, "rsum": 40.0}, "rerank": {"i2t@1": 6.0, "rsum": 44.0}},
  "grid": {"i2t": [{"k": 1, "i2t@1": 5.0}], "t2i": [{"k": 1, "k_text": 0, "t2i@1": 1.0}]},
  "choice": {"k_i2t": 1, "k_t2i": 1, "k_text": 0}, "text_sim": "cosine",
  "trainer_config": {"model": "vse", "epochs": 1}, "model_config": {"embed_dim": 16},
  "captions_per_image": 5, "resumed_at_epoch": [], "train_seconds": 1.5, "device": "cpu", "pid": 7,
  "target": null
}"""


def test_an_old_result_json_reads_back_with_query_groups_and_round_trips(tmp_path):
    (tmp_path / "result.json").write_text(OLD_RESULT_JSON)
    old = BranchResult.read(tmp_path)
    assert old.t2i_groups == "query"  # before t2i_groups, T2I re-ranked with the query's group
    assert old.choice == {"k_i2t": 1, "k_t2i": 1, "k_text": 0} and old.test["rerank"]["rsum"] == 44.0
    assert old.stopped_early == {} and old.footer_note() is None
    old.write(tmp_path / "again")
    back = BranchResult.read(tmp_path / "again")
    assert back == old
    assert back.to_json() == {**json.loads(OLD_RESULT_JSON), "t2i_groups": "query", "stopped_early": {}}


@pytest.mark.parametrize("change, match", [
    (lambda d: {**d, "colour": 1}, "unknown key 'colour'"),
    (lambda d: {k: v for k, v in d.items() if k != "choice"}, "missing key 'choice'"),
    (lambda d: [d], "not a branch member's result.json"),
])
def test_a_foreign_result_json_is_refused_naming_the_file(tmp_path, change, match):
    (tmp_path / "result.json").write_text(json.dumps(change(json.loads(OLD_RESULT_JSON))))
    with pytest.raises(InputError, match=match) as e:
        BranchResult.read(tmp_path)
    assert str(tmp_path / "result.json") in str(e.value)
