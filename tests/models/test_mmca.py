"""MMCA (models/mmca.py): score formula, per-pair cross attention, n-gram pooling, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_pairs import make_pairs, recall_at

from scalable_xmr.errors import InputError
from scalable_xmr.functional.contrastive import hinge_max_violation
from scalable_xmr.models.base import BranchModel
from scalable_xmr.models.mmca import MMCA, MMCAConfig, NGramPool, concat_text_reprs

TINY = {"embed_dim": 16, "n_heads": 2, "n_filters": 8, "text_layers": 1, "dropout": 0.0}


def _model(seed: int = 0, **overrides: object) -> MMCA:
    torch.manual_seed(seed)
    return MMCA(MMCAConfig(**{**TINY, **overrides}), vocab_size=30, image_dim=6).eval()


def _tokens(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, :n] = torch.randint(1, 30, (n,), generator=gen)
    return tokens, torch.tensor(lengths)


def test_is_branch_model_and_shapes() -> None:
    model = _model()
    assert isinstance(model, BranchModel) and model.name == "mmca"
    i0, regions = model.encode_images(torch.randn(3, 4, 6))
    assert i0.shape == (3, 16) and regions.shape == (3, 4, 16)
    torch.testing.assert_close(i0.norm(dim=1), torch.ones(3))
    c0, words, valid = model.encode_texts(*_tokens([5, 2]))
    assert c0.shape == (2, 16) and words.shape == (2, 5, 16)
    assert valid.tolist() == [[True] * 5, [True, True, False, False, False]]
    torch.testing.assert_close(c0.norm(dim=1), torch.ones(2))
    i1, c1 = model.cross_embeddings((i0, regions), (c0, words, valid))
    assert i1.shape == c1.shape == (3, 2, 16)
    assert model.similarity((i0, regions), (c0, words, valid)).shape == (3, 2)
    # a (B, dim) image is one region
    assert model.encode_images(torch.randn(3, 6))[1].shape == (3, 1, 16)


def test_score_formula_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """S = i0·c0 + α·(i1·c1) (MMCA §3.5) on hand-picked unit vectors."""
    model = _model(alpha=0.2)
    i0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c0 = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
    i1 = torch.tensor([[1.0, 0.0]]).expand(2, 3, 2)
    c1 = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]],
                       [[0.5, 0.0], [0.0, 0.0], [0.3, 0.0]]])
    monkeypatch.setattr(model, "cross_embeddings", lambda img, txt: (i1, c1))
    sim = model.similarity((i0, torch.zeros(2, 1, 2)), (c0, None, None))
    expected = torch.tensor([[0.6 + 0.2 * 0.0, 1.0 + 0.2 * 1.0, 0.0 + 0.2 * -1.0],
                             [0.8 + 0.2 * 0.5, 0.0 + 0.2 * 0.0, -1.0 + 0.2 * 0.3]])
    torch.testing.assert_close(sim, expected)


def test_similarity_combines_public_substeps() -> None:
    model = _model(alpha=0.2)
    with torch.no_grad():
        img = model.encode_images(torch.randn(3, 4, 6))
        txt = model.encode_texts(*_tokens([4, 2, 3, 1]))
        i1, c1 = model.cross_embeddings(img, txt)
        sim = model.similarity(img, txt)
    i0, c0 = img[0].numpy(), txt[0].numpy()
    expected = np.zeros((3, 4))
    for i in range(3):
        for j in range(4):
            expected[i, j] = i0[i] @ c0[j] + 0.2 * (i1[i, j].numpy() @ c1[i, j].numpy())
    np.testing.assert_allclose(sim.numpy(), expected, atol=1e-5)
    # the cross part is pair dependent: one image, two texts -> two different i1
    assert (i1[0, 0] - i1[0, 1]).abs().max() > 1e-4


def test_alpha_zero_reduces_to_self_attention_score() -> None:
    model = _model(alpha=0.0)
    with torch.no_grad():
        img = model.encode_images(torch.randn(3, 4, 6))
        txt = model.encode_texts(*_tokens([4, 2]))
        sim = model.similarity(img, txt)
    torch.testing.assert_close(sim, img[0] @ txt[0].T)


def test_batched_pairs_match_one_pair_at_a_time() -> None:
    """All pairs at once == each (image, text) alone, each text encoded without batch padding."""
    model = _model(pair_chunk=5)  # blocks of 1 image x 4 texts
    lengths = [4, 1, 3, 2]
    tokens, lens = _tokens(lengths)
    images = torch.randn(2, 4, 6)
    with torch.no_grad():
        img = model.encode_images(images)
        sim = model.similarity(img, model.encode_texts(tokens, lens))
        for i in range(2):
            one_img = model.encode_images(images[i : i + 1])
            for j, n in enumerate(lengths):
                one_txt = model.encode_texts(tokens[j : j + 1, :n], lens[j : j + 1])
                ref = model.similarity(one_img, one_txt)
                assert abs(float(ref) - float(sim[i, j])) < 1e-5


def test_text_chunks_concatenate_to_the_same_scores() -> None:
    """Texts encoded in two chunks of different T, concatenated, score as one batch does."""
    model = _model()
    tokens, lens = _tokens([2, 1, 5, 3])
    with torch.no_grad():
        img = model.encode_images(torch.randn(3, 4, 6))
        whole = model.similarity(img, model.encode_texts(tokens, lens))
        chunks = [model.encode_texts(tokens[:2, :2], lens[:2]),
                  model.encode_texts(tokens[2:], lens[2:])]
        joined = concat_text_reprs(chunks)
    assert joined[1].shape == (4, 5, 16) and joined[2].shape == (4, 5)
    torch.testing.assert_close(model.similarity(img, joined), whole, atol=1e-5, rtol=0)


def test_ngram_pool_against_loop() -> None:
    torch.manual_seed(3)
    pool = NGramPool(dim=3, n_filters=2)
    with torch.no_grad():
        pool.norm.weight.uniform_(0.5, 1.5)
        pool.norm.bias.uniform_(-0.5, 0.5)
    frags = torch.randn(2, 4, 3)
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])
    with torch.no_grad():
        out = pool(frags, valid).numpy()
    for b in range(2):
        n = int(valid[b].sum())
        e = np.concatenate([frags[b, :n].numpy(), np.zeros((2, 3))])  # zeros past the end
        q = []
        for conv, width in zip(pool.convs, (1, 2, 3), strict=True):
            w, bias = conv.weight.detach().numpy(), conv.bias.detach().numpy()  # (F, d, l)
            p = [np.maximum(0, np.einsum("fdl,ld->f", w, e[k : k + width]) + bias)
                 for k in range(n)]  # Eq. 6
            q.append(np.max(p, axis=0))
        h = pool.fc.weight.detach().numpy() @ np.concatenate(q) + pool.fc.bias.detach().numpy()
        h = (h - h.mean()) / np.sqrt(h.var() + 1e-5)
        h = h * pool.norm.weight.detach().numpy() + pool.norm.bias.detach().numpy()  # Eq. 7
        np.testing.assert_allclose(out[b], h / np.linalg.norm(h), atol=1e-5)


def test_dense_text_vectors() -> None:
    torch.manual_seed(0)
    model = MMCA(MMCAConfig(**TINY), vocab_size=30, image_dim=6, text_dim=5).eval()
    with torch.no_grad():
        txt = model.encode_texts(torch.randn(4, 5), torch.zeros(4))
        sim = model.similarity(model.encode_images(torch.randn(2, 3, 6)), txt)
    assert txt[1].shape == (4, 1, 16) and sim.shape == (2, 4)
    with pytest.raises(InputError, match="text_dim=<caption vector size>"):
        _model().encode_texts(torch.randn(4, 5), torch.zeros(4))
    with pytest.raises(InputError, match=r"dense captions must have shape \(B, 5\)"):
        model.encode_texts(torch.randn(4, 7), torch.zeros(4))


def test_long_captions_truncated() -> None:
    model = _model(max_len=3)
    tokens, lens = _tokens([5, 2])
    with torch.no_grad():
        long_c0, words, _ = model.encode_texts(tokens, lens)
        short_c0 = model.encode_texts(tokens[:, :3], torch.tensor([3, 2]))[0]
    assert words.shape[1] == 3
    torch.testing.assert_close(long_c0, short_c0)


@pytest.mark.parametrize(
    ("images", "tokens", "lengths", "match"),
    [
        (torch.randn(2, 4, 7), None, None, r"images: expected shape \(B, 6\)"),
        (torch.randn(2, 1, 4, 6), None, None, "images: expected shape"),
        (torch.ones(2, 6, dtype=torch.long), None, None, "images: expected a float tensor"),
        (None, torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 0]), "lengths: every"),
        (None, torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 4]), "T=3, got 4"),
        (None, torch.ones(2, 3, dtype=torch.long), torch.tensor([3]), r"lengths: expected"),
        (None, torch.full((2, 3), 30), torch.tensor([3, 3]), r"\[0, 30\)"),
        (None, torch.ones(3, dtype=torch.long), torch.tensor([3]), "tokens: expected a"),
    ],
)
def test_bad_inputs(images, tokens, lengths, match) -> None:
    model = _model()
    with pytest.raises(InputError, match=match):
        if images is not None:
            model.encode_images(images)
        else:
            model.encode_texts(tokens, lengths)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"embed_dim": 10, "n_heads": 3}, "divisible by n_heads"),
        ({"alpha": -0.1}, "alpha"),
        ({"hinge": "mean"}, "hinge"),
        ({"n_layers": 0}, "n_layers: must be a positive integer"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_config(overrides, match) -> None:
    with pytest.raises(InputError, match=match):
        MMCAConfig(**{**TINY, **overrides})


def test_tiny_training_learns_the_pairing() -> None:
    torch.set_num_threads(1)
    images, tokens, lengths = make_pairs()
    torch.manual_seed(0)
    model = MMCA(MMCAConfig(embed_dim=32, n_heads=4, n_filters=32, text_layers=1, dropout=0.0),
                 vocab_size=30, image_dim=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        sim = model.similarity(model.encode_images(images), model.encode_texts(tokens, lengths))
        loss = hinge_max_violation(sim, model.config.margin)  # MMCA Eq. 15
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        sim = model.similarity(model.encode_images(images), model.encode_texts(tokens, lengths))
    i2t, t2i = recall_at(sim, 5)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert i2t >= 0.6 and t2i >= 0.6, (i2t, t2i)  # chance is 5/40 = 12.5 %
