"""fusedloss.paddle: Fluid's layouts, output shapes and conventions over fusedloss.functional."""
import math

import pytest
import torch
import torch.nn.functional as TF

import fusedloss.functional as F
from fusedloss import paddle
from test_reference_hsigmoid import hsigmoid_data


def test_warpctc_takes_logits_and_returns_per_sequence_losses():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    label = torch.tensor([[1, 2, 2], [3, 4, 0], [2, 0, 0]], dtype=torch.int32)
    input_length, label_length = torch.tensor([6, 5, 4]), torch.tensor([3, 2, 1])
    expected = TF.ctc_loss(logits.log_softmax(-1), label, input_length, label_length, reduction="none")
    loss = paddle.warpctc(logits, label, input_length=input_length, label_length=label_length)
    assert loss.shape == (3, 1)
    torch.testing.assert_close(loss.squeeze(1), expected)
    full = paddle.warpctc(logits, label)  # lengths default to the full T and S
    expected_full = TF.ctc_loss(logits.log_softmax(-1), label, [6] * 3, [3] * 3, reduction="none")
    torch.testing.assert_close(full.squeeze(1), expected_full)

    # norm_by_times: Fluid keeps the loss and divides each sequence's gradient by its length
    normed = paddle.warpctc(logits, label, norm_by_times=True, input_length=input_length,
                            label_length=label_length)
    torch.testing.assert_close(normed, loss)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    (normed_grad,) = torch.autograd.grad(normed.sum(), logits)
    torch.testing.assert_close(normed_grad, grad / input_length.view(1, -1, 1))


def _fluid_crf(seed=0):
    generator = torch.Generator().manual_seed(seed)
    emissions = torch.randn(3, 4, 3, generator=generator, dtype=torch.float64)
    transition = torch.randn(5, 3, generator=generator, dtype=torch.float64)  # (K + 2, K)
    label = torch.randint(0, 3, (3, 4, 1), generator=generator)
    return emissions, transition, label, torch.tensor([4, 2, 3])


def test_linear_chain_crf_fluid_layout():
    emissions, transition, label, length = _fluid_crf()
    mask = torch.arange(4) < length.view(-1, 1)
    expected = F.crf_nll(emissions, label.squeeze(2), transition[2:], transition[0], transition[1],
                         mask=mask, reduction="none")
    loss = paddle.linear_chain_crf(emissions, label, transition, length=length)
    assert loss.shape == (3, 1)
    torch.testing.assert_close(loss.squeeze(1), expected)
    # sequence 1, length 2, by hand: log Z over the 9 paths minus the gold path's score
    start, end, trans = transition[0], transition[1], transition[2:]
    def score(a, b):
        return start[a] + emissions[1, 0, a] + trans[a, b] + emissions[1, 1, b] + end[b]
    log_z = torch.logsumexp(torch.stack([score(a, b) for a in range(3) for b in range(3)]), 0)
    gold = label[1, :2, 0].tolist()
    torch.testing.assert_close(loss[1, 0], log_z - score(*gold))


def test_crf_decoding_fluid_padding_and_label_mode():
    emissions, transition, label, length = _fluid_crf()
    _, tags = F.crf_decode(emissions, transition[2:], transition[0], transition[1],
                           mask=torch.arange(4) < length.view(-1, 1))
    path = paddle.crf_decoding(emissions, transition, length=length)
    assert path.dtype == torch.int64 and path.shape == (3, 4)
    assert path.tolist() == tags.clamp(min=0).tolist()  # Fluid pads with 0, crf_decode with -1
    correct = paddle.crf_decoding(emissions, transition, label=path.unsqueeze(2), length=length)
    assert correct.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    flipped = path.clone()
    flipped[0, 1] = (flipped[0, 1] + 1) % 3
    assert paddle.crf_decoding(emissions, transition, label=flipped, length=length)[0].tolist() == [1, 0, 1, 1]


def test_hsigmoid_and_nce_return_fluid_shapes():
    x, weight, bias = hsigmoid_data(4)
    label = torch.tensor([[0], [1], [2], [3], [4]])
    loss = paddle.hsigmoid(x, label, 5, weight, bias.view(-1, 1))
    assert loss.shape == (5, 1)
    torch.testing.assert_close(loss.squeeze(1), F.hsigmoid_loss(x, label, 5, weight, bias, reduction="none"))
    with pytest.raises(ValueError):
        paddle.hsigmoid(x, label, 5, weight, bias, is_custom=True)

    log_q = torch.full((4,), -math.log(4), dtype=torch.float64)
    noise = torch.tensor([[1, 2]] * 5)
    nce = paddle.nce(x, label.clamp(max=3), 4, weight, bias, noise, log_q)
    assert nce.shape == (5, 1)
    expected = F.nce_loss(x, label.clamp(max=3), weight, bias, noise, log_q, "none")
    torch.testing.assert_close(nce.squeeze(1), expected)
    with pytest.raises(ValueError):
        paddle.nce(x, label.clamp(max=3), 5, weight, bias, noise, log_q)
