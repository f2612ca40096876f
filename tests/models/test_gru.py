"""models/gru.py: the batched GRU's last hidden state and every gradient against a caption-by-caption
loop over the textbook GRU equations (float64, autograd), padding and batch order included."""

from __future__ import annotations

import pytest
import torch

from scalable_xmr.errors import InputError
from scalable_xmr.models.gru import gru_last_hidden, pack_by_length
from scalable_xmr.models.vse import GRUTextEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference_last_hidden(enc: GRUTextEncoder, tokens, lengths) -> torch.Tensor:
    """One caption at a time, one word at a time: h_t = (1 - z) n + z h_{t-1}, h_0 = 0."""
    gru, hid = enc.gru, enc.out_dim
    w_ih, w_hh, b_ih, b_hh = gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
    out = []
    for row in range(len(tokens)):
        h = torch.zeros(hid, dtype=w_ih.dtype)
        for tok in tokens[row, : int(lengths[row])]:
            x = enc.embed.weight[tok]
            gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
            r = torch.sigmoid(gi[:hid] + gh[:hid])
            z = torch.sigmoid(gi[hid : 2 * hid] + gh[hid : 2 * hid])
            n = torch.tanh(gi[2 * hid :] + r * gh[2 * hid :])
            h = (1 - z) * n + z * h
        out.append(h)
    return torch.stack(out)


def _batch(seed: int, n: int = 7, width: int = 6, vocab: int = 11):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    lengths[n // 2] = width  # the longest caption in the middle of the batch
    tokens = torch.randint(1, vocab, (n, width + 2), generator=g)  # two columns of pure padding
    tokens[torch.arange(width + 2)[None, :] >= lengths[:, None]] = 0
    return tokens, lengths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_last_hidden_and_gradients_match_a_per_caption_loop(seed):
    torch.manual_seed(seed)
    enc = GRUTextEncoder(vocab_size=11, word_dim=4, hidden=5).double()
    tokens, lengths = _batch(seed)
    weight = torch.randn(len(tokens), 5, dtype=torch.float64)  # a loss that weighs every output

    got = enc(tokens, lengths)
    (got * weight).sum().backward()
    got_grads = {k: p.grad.clone() for k, p in enc.named_parameters()}
    enc.zero_grad()

    ref = _reference_last_hidden(enc, tokens, lengths)
    (ref * weight).sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for name, p in enc.named_parameters():
        torch.testing.assert_close(got_grads[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_one_word_captions_and_all_equal_lengths():
    torch.manual_seed(3)
    enc = GRUTextEncoder(vocab_size=9, word_dim=3, hidden=4).double()
    for lengths in (torch.tensor([1, 1, 1]), torch.tensor([4, 4, 4]), torch.tensor([1, 4, 2])):
        tokens = torch.randint(1, 9, (3, 4))
        tokens[torch.arange(4)[None, :] >= lengths[:, None]] = 0
        got = enc(tokens, lengths)
        got.sum().backward()
        grads = [p.grad.clone() for p in enc.parameters()]
        enc.zero_grad()
        ref = _reference_last_hidden(enc, tokens, lengths)
        ref.sum().backward()
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
        for g, p in zip(grads, enc.parameters(), strict=True):
            torch.testing.assert_close(g, p.grad, rtol=1e-9, atol=1e-12)
        enc.zero_grad()


def test_packing_is_time_major_longest_first():
    tokens = torch.tensor([[5, 6, 0], [7, 0, 0], [1, 2, 3]])
    packed, order, sizes = pack_by_length(tokens, torch.tensor([2, 1, 3]))
    assert order.tolist() == [2, 0, 1] and sizes == [3, 2, 1]
    assert packed.tolist() == [1, 5, 7, 2, 6, 3]


def test_matches_torch_nn_gru_in_float32():
    torch.manual_seed(4)
    enc = GRUTextEncoder(vocab_size=20, word_dim=8, hidden=16)
    tokens, lengths = _batch(4, n=12, width=9, vocab=20)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        enc.embed(tokens), lengths, batch_first=True, enforce_sorted=False)
    _, h_ref = enc.gru(packed)
    torch.testing.assert_close(enc(tokens, lengths), h_ref[-1], rtol=1e-5, atol=1e-6)
    x, order, sizes = pack_by_length(tokens, lengths)
    h_sorted = gru_last_hidden(enc.embed(x), sizes, enc.gru)
    torch.testing.assert_close(h_sorted, h_ref[-1][order], rtol=1e-5, atol=1e-6)


def test_bad_lengths_are_one_line_errors():
    enc = GRUTextEncoder(vocab_size=9, word_dim=3, hidden=4)
    tokens = torch.ones(2, 3, dtype=torch.long)
    for lengths in (torch.tensor([0, 2]), torch.tensor([4, 1]), torch.tensor([1])):
        with pytest.raises(InputError, match="lengths"):
            enc(tokens, lengths)


def test_without_gradients_the_same_values():
    torch.manual_seed(5)
    enc = GRUTextEncoder(vocab_size=11, word_dim=4, hidden=5).double()
    tokens, lengths = _batch(5)
    with torch.no_grad():
        quiet = enc(tokens, lengths)
    torch.testing.assert_close(quiet, enc(tokens, lengths).detach(), rtol=0, atol=0)
    torch.testing.assert_close(quiet, _reference_last_hidden(enc, tokens, lengths).detach(),
                               rtol=1e-10, atol=1e-12)
