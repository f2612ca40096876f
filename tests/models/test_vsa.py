"""VSA-AE-MMD (models/vsa.py): cosine scores, AE losses, MMD alignment, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_pairs import make_pairs, recall_at

from scalable_xmr.errors import InputError
from scalable_xmr.functional.contrastive import hinge_sum
from scalable_xmr.models.base import BranchModel
from scalable_xmr.models.vsa import VSA, VSAConfig, conv_lengths

TINY = {"embed_dim": 8, "word_dim": 6, "conv_channels": (10,), "filter_size": 3,
        "strides": (2,), "max_len": 7}


def _model(seed: int = 0, text_dim: int | None = None, **overrides: object) -> VSA:
    torch.manual_seed(seed)
    return VSA(VSAConfig(**{**TINY, **overrides}), vocab_size=12, image_dim=5, text_dim=text_dim)


def _tokens(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, :n] = torch.randint(1, 12, (n,), generator=gen)
    return tokens, torch.tensor(lengths)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def test_shapes_and_region_pooling() -> None:
    model = _model()
    assert isinstance(model, BranchModel) and model.name == "vsa"
    regions = torch.randn(3, 4, 5)
    codes = model.encode_images(regions)
    assert codes.shape == (3, 8) and bool((codes.abs() <= 1).all())
    torch.testing.assert_close(codes, model.encode_images(regions.mean(dim=1)))
    txt = model.encode_texts(*_tokens([7, 2]))
    assert txt.shape == (2, 8)
    assert model.similarity(codes, txt).shape == (3, 2)


@pytest.mark.parametrize(
    ("max_len", "z", "strides", "expected"),
    [(32, 4, (2, 2), [32, 15, 6]), (29, 4, (2, 2), [29, 13, 5]), (7, 3, (2,), [7, 3]),
     (10, 4, (2, 1), [10, 4, 1])],
)
def test_conv_lengths_and_decoder_mirror(max_len, z, strides, expected) -> None:
    assert conv_lengths(max_len, z, strides) == expected  # VSA-AE-MMD Eq. 1 by hand
    model = _model(max_len=max_len, filter_size=z, strides=strides,
                   conv_channels=(4,) * len(strides))
    out = model.text_ae.decode(torch.randn(2, 8))
    assert out.shape == (2, max_len, 6)


def test_cosine_similarity_by_hand() -> None:
    sim = _model().similarity(torch.tensor([[3.0, 4.0], [0.0, -2.0]]),
                              torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]))
    torch.testing.assert_close(sim, torch.tensor([[0.6, 0.8, 1.0], [0.0, -1.0, -0.8]]))


def test_image_recon_loss_against_loop() -> None:
    model = _model()
    images = torch.randn(3, 2, 5)
    codes = model.encode_images(images)
    loss = float(model.image_recon_loss(images, codes).detach())
    w, b = _np(model.visual_ae.dec.weight), _np(model.visual_ae.dec.bias)
    x = _np(images).mean(axis=1)
    ref = sum(np.sum((w @ _np(codes[i]) + b - x[i]) ** 2) for i in range(3))  # Eq. 6, summed (Eq. 11)
    assert abs(loss - ref) < 1e-4 * max(1.0, ref)


def test_text_recon_loss_against_loop() -> None:
    model = _model(tau=0.5)
    tokens, lengths = _tokens([5, 2, 7])
    codes = model.encode_texts(tokens, lengths)
    loss = float(model.text_recon_loss(tokens, lengths, codes).detach())
    recon = _np(model.text_ae.decode(codes))  # (B, T0, k)
    emb = _np(model.text_ae.word_emb.weight)
    ref = []
    for b, n in enumerate(lengths.tolist()):
        total = 0.0
        for t in range(n):
            x = recon[b, t]
            cos = np.array([x @ emb[v] / np.linalg.norm(x) / np.linalg.norm(emb[v])
                            for v in range(1, 12)])  # words 1..11 (0 = padding)
            logp = cos / 0.5 - np.log(np.sum(np.exp(cos / 0.5)))  # Eq. 2
            total -= logp[int(tokens[b, t]) - 1]  # Eq. 3
        ref.append(total)
    assert abs(loss - sum(ref)) < 1e-4 * max(1.0, abs(sum(ref)))  # summed over the batch (Eq. 11)


def _mmd_loop(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2)))  # Eq. 10

    kxx = np.mean([k(a, b) for a in x for b in x])
    kyy = np.mean([k(a, b) for a in y for b in y])
    kxy = np.mean([k(a, b) for a in x for b in y])
    return kxx + kyy - 2 * kxy


def _unit(t: torch.Tensor) -> np.ndarray:
    a = _np(t)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_mmd_aligns_images_with_texts_over_source_and_target(sigma: float) -> None:
    """VSA-AE-MMD Eq. 9: p = image embeddings, q = text embeddings, each source ∪ target."""
    model = _model(recon_weight=0.0, mmd_weight=1.0, sigma=sigma)
    images, (tokens, lengths) = torch.randn(3, 5), _tokens([4, 2, 6])
    t_images, (t_tokens, t_lengths) = torch.randn(2, 4, 5), _tokens([3, 7], seed=9)
    img, txt = model.encode_images(images), model.encode_texts(tokens, lengths)
    target = {"images": t_images, "tokens": t_tokens, "lengths": t_lengths}
    got = float(model.extra_loss(images, tokens, lengths, img, txt, target).detach())
    x = _unit(torch.cat([img, model.encode_images(t_images)]))
    y = _unit(torch.cat([txt, model.encode_texts(t_tokens, t_lengths)]))
    assert abs(got - _mmd_loop(x, y, sigma)) < 1e-5
    # without a target batch: source images against source texts only
    got = float(model.extra_loss(images, tokens, lengths, img, txt).detach())
    assert abs(got - _mmd_loop(_unit(img), _unit(txt), sigma)) < 1e-5
    # a target with images only joins the image side
    got = float(
        model.extra_loss(images, tokens, lengths, img, txt, {"images": t_images}).detach())
    assert abs(got - _mmd_loop(x, _unit(txt), sigma)) < 1e-5


def test_extra_loss_weights_and_target_recon_terms() -> None:
    model = _model(recon_weight=0.3, mmd_weight=2.0)
    images, (tokens, lengths) = torch.randn(3, 5), _tokens([4, 2, 6])
    t_images, (t_tokens, t_lengths) = torch.randn(2, 5), _tokens([3, 7], seed=9)
    img, txt = model.encode_images(images), model.encode_texts(tokens, lengths)
    t_img, t_txt = model.encode_images(t_images), model.encode_texts(t_tokens, t_lengths)
    target = {"images": t_images, "tokens": t_tokens, "lengths": t_lengths}
    got = float(model.extra_loss(images, tokens, lengths, img, txt, target).detach())
    recon = (model.image_recon_loss(images, img) + model.text_recon_loss(tokens, lengths, txt)
             + model.image_recon_loss(t_images, t_img)
             + model.text_recon_loss(t_tokens, t_lengths, t_txt))  # Eq. 11
    mmd = _mmd_loop(_unit(torch.cat([img, t_img])), _unit(torch.cat([txt, t_txt])), 1.0)
    assert abs(got - (0.3 * float(recon.detach()) + 2.0 * mmd)) < 1e-4


def test_padding_and_truncation_do_not_change_codes() -> None:
    model = _model()
    tokens, lengths = _tokens([7, 3])
    with torch.no_grad():
        batch = model.encode_texts(tokens, lengths)
        alone = model.encode_texts(tokens[1:, :3], lengths[1:])
        longer = torch.cat([tokens, torch.randint(1, 12, (2, 4))], dim=1)  # 11 > max_len = 7
        truncated = model.encode_texts(longer, torch.tensor([11, 3]))
    torch.testing.assert_close(batch[1:], alone)
    torch.testing.assert_close(truncated, batch)


def test_dense_text_vectors() -> None:
    model = _model(text_dim=4)
    captions, images = torch.randn(3, 4), torch.randn(3, 5)
    img, txt = model.encode_images(images), model.encode_texts(captions, torch.zeros(3))
    assert txt.shape == (3, 8)
    w, b = _np(model.dense_text_ae.dec.weight), _np(model.dense_text_ae.dec.bias)
    ref = sum(np.sum((w @ _np(txt[i]) + b - _np(captions[i])) ** 2) for i in range(3))
    got = float(model.text_recon_loss(captions, None, txt).detach())
    assert abs(got - ref) < 1e-4 * max(1, ref)
    target = {"tokens": torch.randn(2, 4)}  # dense target captions need no lengths
    assert torch.isfinite(model.extra_loss(images, captions, None, img, txt, target))
    with pytest.raises(InputError, match="text_dim=<caption vector size>"):
        _model().encode_texts(captions, torch.zeros(3))
    with pytest.raises(InputError, match=r"dense captions must have shape \(B, 4\)"):
        model.encode_texts(torch.randn(3, 6), torch.zeros(3))


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ({"image": torch.randn(2, 5)}, r"unknown keys \['image'\]"),
        ({"tokens": torch.ones(2, 3, dtype=torch.long)}, "need 'lengths' too"),
        ({"lengths": torch.tensor([1, 2])}, "'lengths' given without 'tokens'"),
        ({"images": torch.randn(2, 6)}, r"images: expected shape \(B, 5\)"),
    ],
)
def test_bad_target(target, match) -> None:
    model = _model()
    images, (tokens, lengths) = torch.randn(2, 5), _tokens([3, 2])
    img, txt = model.encode_images(images), model.encode_texts(tokens, lengths)
    with pytest.raises(InputError, match=match):
        model.extra_loss(images, tokens, lengths, img, txt, target)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"max_len": 4, "filter_size": 3, "strides": (2, 2), "conv_channels": (4, 4)},
         "max_len=4 is too short"),
        ({"conv_channels": (4, 4)}, "one entry per strided conv layer"),
        ({"sigma": 0.0}, "sigma: must be > 0"),
        ({"mmd_weight": -1.0}, "mmd_weight: must be >= 0"),
        ({"hinge": "hard"}, "hinge"),
        ({"embed_dim": 0}, "embed_dim: must be a positive integer"),
    ],
)
def test_bad_config(overrides, match) -> None:
    with pytest.raises(InputError, match=match):
        VSAConfig(**{**TINY, **overrides})


def test_config_lists_become_tuples() -> None:
    cfg = VSAConfig(**{**TINY, "conv_channels": [10], "strides": [2]})
    assert cfg.conv_channels == (10,) and cfg.strides == (2,)


def test_tiny_training_learns_the_pairing() -> None:
    torch.set_num_threads(1)
    images, tokens, lengths = make_pairs(40, seed=1)
    t_images, t_tokens, t_lengths = make_pairs(20, seed=2)
    shuffle = torch.randperm(20, generator=torch.Generator().manual_seed(0))  # unpaired target
    target = {"images": t_images, "tokens": t_tokens[shuffle], "lengths": t_lengths[shuffle]}
    torch.manual_seed(0)
    cfg = VSAConfig(embed_dim=32, word_dim=16, conv_channels=(32,), filter_size=3, strides=(2,),
                    max_len=8, recon_weight=0.1)
    model = VSA(cfg, vocab_size=30, image_dim=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    hinge, extra = [], []
    for _ in range(40):
        img, txt = model.encode_images(images), model.encode_texts(tokens, lengths)
        rank_loss = hinge_sum(model.similarity(img, txt), cfg.margin)  # VSA-AE-MMD Eq. 8
        other = model.extra_loss(images, tokens, lengths, img, txt, target)  # Eq. 9-11
        opt.zero_grad()
        (rank_loss + other).backward()  # Eq. 12
        opt.step()
        hinge.append(float(rank_loss.detach()))
        extra.append(float(other.detach()))
    with torch.no_grad():
        sim = model.similarity(model.encode_images(images), model.encode_texts(tokens, lengths))
    i2t, t2i = recall_at(sim, 5)
    assert np.mean(hinge[-5:]) < 0.2 * np.mean(hinge[:5]), hinge
    assert np.mean(extra[-5:]) < 0.5 * np.mean(extra[:5]), extra
    assert i2t >= 0.6 and t2i >= 0.6, (i2t, t2i)  # chance is 5/40 = 12.5 %


def _split(images: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, index: list[int]):
    from scalable_xmr.data.paired import PairedSplit

    n, m = len(images), len(tokens)
    return PairedSplit(split="train", image_ids=np.array([f"i{k}" for k in range(n)]),
                       images=images.numpy(), caption_ids=np.array([f"c{k}" for k in range(m)]),
                       caption_image_index=np.array(index), tokens=tokens.numpy(),
                       lengths=lengths.numpy(), text_features=None, captions_per_image=None,
                       vocab_size=12)


def _text_nll(model: VSA, tokens: torch.Tensor, lengths: torch.Tensor, codes: torch.Tensor) -> list:
    """Eq. 2-3 of each caption with explicit loops over words and vocabulary."""
    recon, emb = _np(model.text_ae.decode(codes)), _np(model.text_ae.word_emb.weight)
    tau, out = model.config.tau, []
    for b, n in enumerate(lengths.tolist()):
        total = 0.0
        for t in range(n):
            cos = np.array([recon[b, t] @ emb[v] / np.linalg.norm(recon[b, t]) / np.linalg.norm(emb[v])
                            for v in range(1, 12)])
            total -= cos[int(tokens[b, t]) - 1] / tau - np.log(np.sum(np.exp(cos / tau)))
        out.append(total)
    return out


def test_trainer_total_loss_sums_every_per_sample_term() -> None:
    """VSA-AE-MMD Eq. 12 on one batch as the trainer computes it: L_SH (Eq. 8) + L_AE (Eq. 11)
    summed over the batch's pairs, source and target, + one L_MMD (Eq. 9) -- by hand."""
    from scalable_xmr.branch.config import PairTrainerConfig
    from scalable_xmr.branch.trainer import PairTrainer

    cfg = VSAConfig(**{**TINY, "tau": 0.5})  # recon_weight = mmd_weight = 1: Eq. 12 unweighted
    images = torch.randn(2, 5, generator=torch.Generator().manual_seed(3))
    tokens, lengths = _tokens([4, 2, 6])
    img_idx = torch.tensor([0, 0, 1])  # captions 0 and 1 describe image 0: not each other's negatives
    t_images = torch.randn(2, 5, generator=torch.Generator().manual_seed(4))
    t_tokens, t_lengths = _tokens([3, 7], seed=9)
    trainer = PairTrainer(PairTrainerConfig(model="vsa"), cfg, _split(images, tokens, lengths, [0, 0, 1]),
                          model=_model(tau=0.5))
    model = trainer.model
    target = {"images": t_images, "tokens": t_tokens, "lengths": t_lengths}
    got = float(trainer.batch_loss(images[img_idx], tokens, lengths, img_idx, target).detach())

    with torch.no_grad():
        h_i, h_c = _np(model.encode_images(images[img_idx])), _np(model.encode_texts(tokens, lengths))
        t_h_i, t_h_c = _np(model.encode_images(t_images)), _np(model.encode_texts(t_tokens, t_lengths))
        nll = _text_nll(model, tokens, lengths, torch.tensor(h_c, dtype=torch.float32))
        t_nll = _text_nll(model, t_tokens, t_lengths, torch.tensor(t_h_c, dtype=torch.float32))
    w_e, b_e = _np(model.visual_ae.enc.weight), _np(model.visual_ae.enc.bias)
    w_d, b_d = _np(model.visual_ae.dec.weight), _np(model.visual_ae.dec.bias)

    def s(i: int, c: int) -> float:  # Eq. 7
        return float(h_i[i] @ h_c[c] / np.linalg.norm(h_i[i]) / np.linalg.norm(h_c[c]))

    def image_ae(x: np.ndarray) -> float:  # Eq. 4-6
        return float(np.sum((w_d @ np.tanh(w_e @ x + b_e) + b_d - x) ** 2))

    alpha, l_sh = cfg.margin, 0.0
    for p in range(3):  # Eq. 8 for each positive pair (image of caption p, caption p)
        for q in range(3):
            if img_idx[q] != img_idx[p]:  # q's caption / image is a negative of pair p
                l_sh += max(0.0, alpha - s(p, p) + s(p, q)) + max(0.0, alpha - s(p, p) + s(q, p))
    l_ae = sum(image_ae(_np(images[int(k)])) for k in img_idx) + sum(nll)  # Eq. 11, source pairs
    l_ae += sum(image_ae(x) for x in _np(t_images)) + sum(t_nll)  # ... and target pairs
    l_mmd = _mmd_loop(_unit(torch.tensor(np.concatenate([h_i, t_h_i]))),
                      _unit(torch.tensor(np.concatenate([h_c, t_h_c]))), cfg.sigma)  # Eq. 9-10
    ref = l_sh + l_ae + l_mmd  # Eq. 12
    assert l_sh > 0 and l_mmd > 0
    assert abs(got - ref) < 1e-4 * ref, (got, l_sh, l_ae, l_mmd)
