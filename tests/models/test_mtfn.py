"""MTFN: tensor fusion scores and losses against hand computations; training on synthetic pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.trainer import PairTrainer
from scalable_xmr.data.paired import make_synthetic_pairs, open_paired_dataset
from scalable_xmr.errors import InputError
from scalable_xmr.functional.contrastive import hinge_max_violation
from scalable_xmr.models.mtfn import MTFN, MTFNConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Rank R = 2, d_v = d_t = d_f = 3; 2-d image vectors and 2-d dense "text" vectors.
W_V, B_V = np.array([[0.5, -0.2], [0.1, 0.3], [-0.4, 0.2]]), np.array([0.1, 0.0, -0.1])
W_T, B_T = np.array([[0.3, 0.1], [-0.2, 0.4], [0.2, -0.1]]), np.array([0.0, 0.1, 0.0])
W_VR = [
    np.array([[1.0, 0.5, -0.5], [0.2, -1.0, 0.3], [0.0, 0.4, 0.8]]),
    np.array([[-0.6, 0.1, 0.9], [0.5, 0.5, 0.5], [1.0, -0.3, 0.2]]),
]
B_VR = [np.array([0.1, -0.1, 0.2]), np.array([0.0, 0.3, -0.2])]
W_TR = [
    np.array([[0.7, -0.4, 0.1], [0.3, 0.9, -0.5], [-0.2, 0.6, 0.4]]),
    np.array([[0.2, 0.2, -0.8], [-0.5, 0.1, 0.6], [0.9, 0.0, 0.3]]),
]
B_TR = [np.array([0.05, 0.0, -0.1]), np.array([-0.2, 0.1, 0.0])]
W_M, B_M = np.array([1.5, -2.0, 0.8]), -0.3


def _hand_model() -> MTFN:
    model = MTFN(MTFNConfig(rank=2, dim=3, dropout=0.0), vocab_size=0, image_dim=2, text_dim=2)
    model = model.double().eval()
    layers = [
        (model.img_proj, W_V, B_V),
        (model.txt_proj.proj, W_T, B_T),
        (model.fuse_img, np.concatenate(W_VR), np.concatenate(B_VR)),  # rank r = rows r*3..
        (model.fuse_txt, np.concatenate(W_TR), np.concatenate(B_TR)),
        (model.score, W_M[None], np.array([B_M])),
    ]
    with torch.no_grad():
        for layer, w, b in layers:
            layer.weight.copy_(torch.tensor(w))
            layer.bias.copy_(torch.tensor(b))
    return model


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _logit_it(v, t):
    """W_m f of MTFN Eq. 2-4 for one pair (no bias b_m, no sigmoid), with explicit loops."""
    v_t = np.tanh(W_V @ v + B_V)  # ṽ
    t_t = np.tanh(W_T @ t + B_T)  # t̃
    f = np.zeros(3)
    for r in range(2):  # Eq. 3
        f += (W_VR[r] @ v_t + B_VR[r]) * (W_TR[r] @ t_t + B_TR[r])
    return W_M @ f


def _s_it(v, t):
    return _sigmoid(_logit_it(v, t) + B_M)  # Eq. 4


def _s_tt(t_a, t_b):
    """Eq. 6 with the branch initialised from the image-text one (W_t^r on both sides)."""
    a, b = np.tanh(W_T @ t_a + B_T), np.tanh(W_T @ t_b + B_T)
    f = sum((W_TR[r] @ a + B_TR[r]) * (W_TR[r] @ b + B_TR[r]) for r in range(2))
    return _sigmoid(W_M @ f + B_M)


IMAGES = np.array([[1.0, -0.5], [0.2, 0.8], [-1.0, 0.3]])
TEXTS = np.array([[0.5, 0.5], [-0.3, 1.2], [0.9, -0.7]])


def test_similarity_matches_hand_computation():
    model = _hand_model()
    img = model.encode_images(torch.tensor(IMAGES))
    txt = model.encode_texts(torch.tensor(TEXTS), torch.ones(3, dtype=torch.long))
    got = model.similarity(img, txt).detach().numpy()
    ref = np.array([[_s_it(v, t) for t in TEXTS] for v in IMAGES])
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # rectangular blocks: the evaluator scores chunks of images against chunks of texts
    np.testing.assert_allclose(model.similarity(img[:2], txt).detach().numpy(), ref[:2], rtol=1e-12)
    # Eq. 5 on these scores, written out: hardest negative text of each image + hardest image
    margin, loss = 0.2, 0.0
    for p in range(3):
        loss += max(max(0.0, margin - ref[p, p] + ref[p, h]) for h in range(3) if h != p)
        loss += max(max(0.0, margin - ref[p, p] + ref[h, p]) for h in range(3) if h != p)
    got_loss = hinge_max_violation(model.similarity(img, txt), margin).detach()
    assert float(got_loss) == pytest.approx(loss)


def test_ranking_scores_are_the_logits_the_loss_sigmoid_is_applied_to():
    model = _hand_model()
    ones = torch.ones(3, dtype=torch.long)
    img, txt = model.encode_images(torch.tensor(IMAGES)), model.encode_texts(torch.tensor(TEXTS), ones)
    logits = model.ranking_scores(img, txt).detach().numpy()
    ref = np.array([[_logit_it(v, t) for t in TEXTS] for v in IMAGES])  # W_m f, by hand
    np.testing.assert_allclose(logits, ref, rtol=1e-12)
    # the scores Eq. 5's hinge is computed on are sigmoid(logit + b_m)
    np.testing.assert_allclose(model.similarity(img, txt).detach().numpy(), _sigmoid(ref + B_M), rtol=1e-12)
    # same ranking, row-wise (I2T) and column-wise (T2I), wherever the sigmoids are distinct
    sig = _sigmoid(ref + B_M)
    assert len(np.unique(sig)) == sig.size
    np.testing.assert_array_equal(np.argsort(-logits, axis=1), np.argsort(-sig, axis=1))
    np.testing.assert_array_equal(np.argsort(-logits, axis=0), np.argsort(-sig, axis=0))
    # the text-text branch likewise (Eq. 6 / Eq. 7)
    model.init_text_branch()
    t = model.encode_texts_tt(torch.tensor(TEXTS), ones)
    tt_ref = np.array([[_s_tt(a, b) for b in TEXTS] for a in TEXTS])
    tt_logits = model.text_ranking_scores(t, t).detach().numpy()
    np.testing.assert_allclose(_sigmoid(tt_logits + B_M), tt_ref, rtol=1e-12)


def test_logits_keep_apart_what_float32_sigmoids_tie():
    """Where float32 sigmoids saturate (here: all to 1.0) the logits still rank."""
    model = _hand_model().float()
    with torch.no_grad():
        model.score.weight.mul_(100.0)  # a confident model: logits of tens
    ones = torch.ones(3, dtype=torch.long)
    x = torch.tensor(IMAGES, dtype=torch.float32)
    img, txt = model.encode_images(x), model.encode_texts(torch.tensor(TEXTS, dtype=torch.float32), ones)
    with torch.no_grad():
        logits, sig = model.ranking_scores(img, txt), model.similarity(img, txt)
    ref = 100.0 * np.array([[_logit_it(v, t) for t in TEXTS] for v in IMAGES])
    np.testing.assert_allclose(logits.numpy(), ref, rtol=1e-5)
    assert len(np.unique(logits.numpy())) == 9
    assert len(np.unique(sig.numpy())) < 9  # float32 sigmoid(x) == 1.0 for every x >~ 17


def test_text_branch_initialised_from_image_text_branch():
    model = _hand_model()
    model.init_text_branch()
    ones = torch.ones(3, dtype=torch.long)
    t = model.encode_texts_tt(torch.tensor(TEXTS), ones)
    got = model.text_similarity(t, t).detach().numpy()
    ref = np.array([[_s_tt(a, b) for b in TEXTS] for a in TEXTS])
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(got, got.T, rtol=1e-12)  # symmetric at initialisation
    # the branches are separate parameters: moving S_TT leaves S_IT alone
    it_before = model.similarity(
        model.encode_images(torch.tensor(IMAGES)), model.encode_texts(torch.tensor(TEXTS), ones)
    ).detach()
    with torch.no_grad():
        for p in model.text_branch_parameters():
            p.add_(0.1)
    it_after = model.similarity(
        model.encode_images(torch.tensor(IMAGES)), model.encode_texts(torch.tensor(TEXTS), ones)
    ).detach()
    torch.testing.assert_close(it_before, it_after)
    it_ids = {id(p) for p in model.image_text_parameters()}
    tt_ids = {id(p) for p in model.text_branch_parameters()}
    assert not it_ids & tt_ids and it_ids | tt_ids == {id(p) for p in model.parameters()}


def test_token_text_path_and_regions():
    torch.manual_seed(0)
    model = MTFN(MTFNConfig(rank=3, dim=8, word_dim=4, text_hidden=5), vocab_size=11, image_dim=6)
    model.eval()
    regions = torch.randn(4, 3, 6)
    img = model.encode_images(regions)
    torch.testing.assert_close(img, model.encode_images(regions.mean(dim=1)))
    tokens = torch.tensor([[1, 2, 3], [4, 0, 0]])
    sim = model.similarity(img, model.encode_texts(tokens, torch.tensor([3, 1])))
    assert sim.shape == (4, 2) and bool(((sim > 0) & (sim < 1)).all())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MTFNConfig(rank=0), "rank"),
        (lambda: MTFNConfig(dropout=1.0), "dropout"),
        (lambda: MTFNConfig(margin=-0.2), "margin"),
        (lambda: MTFNConfig(hinge="soft"), "hinge"),
        (lambda: MTFN(object(), 5, 3), "MTFNConfig"),
        (lambda: MTFN(MTFNConfig(dim=4), 5, 3).encode_texts(torch.randn(2, 3), None), "LongTensor"),
    ],
)
def test_bad_inputs(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_trains_far_above_chance_then_text_branch(tmp_path):
    root = make_synthetic_pairs(
        tmp_path / "syn", seed=0, n_train=150, n_val=40, n_test=0, n_regions=4, dim=16, vocab_size=82
    )
    ds = open_paired_dataset(root)
    cfg = PairTrainerConfig(model="mtfn", epochs=6, text_epochs=2, batch_size=32, lr=5e-3)
    # The paper's hardest-negative hinge on sigmoid scores learns slowly from random text
    # encoders on this tiny set; the sum over negatives keeps the test short.
    mcfg = MTFNConfig(rank=8, dim=64, word_dim=16, text_hidden=64, dropout=0.0, hinge="sum")
    trainer = PairTrainer(cfg, mcfg, ds.read_split("train"), ds.read_split("val"))
    history = trainer.fit()
    it = [r for r in history if r["stage"] == "image_text"]
    tt = [r for r in history if r["stage"] == "text_text"]
    assert len(it) == 6 and len(tt) == 2
    best = max(it, key=lambda r: r["val_rsum"])["val"]
    # 40 val images x 5 captions: chance R@10 is 25 %
    assert best["i2t@10"] > 45 and best["t2i@10"] > 45, best
    # nearest other caption of the same image by chance: 4 / 199 = 2 %
    assert max(r["val"]["tt_r1"] for r in tt) > 6
    # the image-text branch is the selected one, untouched by the text-text stage
    assert trainer.evaluate()["rsum"] == pytest.approx(max(r["val_rsum"] for r in it))
