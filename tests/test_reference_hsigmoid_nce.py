"""Hierarchical sigmoid and NCE against hand-worked numbers, the Fluid mappings, the nn modules."""
import math

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings, strategies as st

import fusedloss.functional as F
from fusedloss import nn_sequence, paddle_sequence as paddle
from fusedloss.reference.hsigmoid import default_paths, hsigmoid_loss
from fusedloss.reference.nce import nce_loss

# CPU tensors on every test device: proofs of the reference itself, which is device-agnostic
pytestmark = pytest.mark.cpu_tensors

# Default tree for 5 classes, worked by hand from code = c + 5: [(inner node, bit), ...] root last.
FIVE_CLASS_PATHS = {
    0: [(1, 1), (0, 0)],          # code 5 = 0b101
    1: [(2, 0), (0, 1)],          # code 6 = 0b110
    2: [(2, 1), (0, 1)],          # code 7 = 0b111
    3: [(3, 0), (1, 0), (0, 0)],  # code 8 = 0b1000
    4: [(3, 1), (1, 0), (0, 0)],  # code 9 = 0b1001
}


def _explicit_hsigmoid(x, path, weight, bias):
    """sum over the path of log(1 + exp(z)) - bit * z, z = x . weight[node] + bias[node]."""
    total = 0.0
    for node, bit in path:
        z = sum(a * w for a, w in zip(x, weight[node])) + bias[node]
        total += math.log1p(math.exp(z)) - bit * z
    return total


def _hsigmoid_data(num_nodes, batch=5, dim=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, dim, generator=generator, dtype=torch.float64),
            torch.randn(num_nodes, dim, generator=generator, dtype=torch.float64),
            torch.randn(num_nodes, generator=generator, dtype=torch.float64))


def test_default_tree_paths_by_hand():
    path_table, path_code = default_paths(torch.arange(5), 5)
    for c, path in FIVE_CLASS_PATHS.items():
        padding = [-1] * (3 - len(path))
        assert path_table[c].tolist() == [node for node, _ in path] + padding
        assert path_code[c].tolist() == [bit for _, bit in path] + padding


def test_hsigmoid_matches_explicit_per_node_sum():
    x, weight, bias = _hsigmoid_data(4)
    label = torch.tensor([0, 1, 2, 3, 4])
    loss = hsigmoid_loss(x, label, 5, weight, bias, reduction="none")
    expected = [_explicit_hsigmoid(x[i].tolist(), FIVE_CLASS_PATHS[c], weight.tolist(), bias.tolist())
                for i, c in enumerate(label.tolist())]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(F.hsigmoid_loss(x, label.view(-1, 1), 5, weight, bias.view(-1, 1)), loss.mean())
    torch.testing.assert_close(F.hsigmoid_loss(x, label, 5, weight, bias, reduction="sum"), loss.sum())
    no_bias = F.hsigmoid_loss(x, label, 5, weight, reduction="none")
    zero_bias = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(no_bias, hsigmoid_loss(x, label, 5, weight, zero_bias, reduction="none"))


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 17), st.integers(0, 2**16))
def test_default_tree_is_a_distribution_over_classes(num_classes, seed):
    """Every class's path ends at the root, paths differ, and sum_c exp(-loss(c)) = 1."""
    path_table, path_code = default_paths(torch.arange(num_classes), num_classes)
    on_path = path_table >= 0
    lengths = on_path.sum(1)
    assert (path_table[torch.arange(num_classes), lengths - 1] == 0).all()
    assert path_table.max() < num_classes - 1
    assert len({tuple(row) for row in path_code.tolist()}) == num_classes
    x, weight, bias = _hsigmoid_data(num_classes - 1, batch=1, seed=seed)
    losses = hsigmoid_loss(x.expand(num_classes, -1), torch.arange(num_classes), num_classes, weight,
                           bias, reduction="none")
    torch.testing.assert_close(torch.exp(-losses).sum(), torch.tensor(1.0, dtype=torch.float64))


def test_custom_tree():
    x, weight, bias = _hsigmoid_data(3, batch=2)
    path_table = torch.tensor([[0, 2, -1], [1, -1, -1]])
    path_code = torch.tensor([[1, 0, -1], [0, -1, -1]])
    loss = F.hsigmoid_loss(x, torch.tensor([0, 1]), 4, weight, bias, path_table, path_code, reduction="none")
    expected = [_explicit_hsigmoid(x[0].tolist(), [(0, 1), (2, 0)], weight.tolist(), bias.tolist()),
                _explicit_hsigmoid(x[1].tolist(), [(1, 0)], weight.tolist(), bias.tolist())]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))


def test_hsigmoid_errors():
    x, weight, bias = _hsigmoid_data(4)
    label = torch.tensor([0, 1, 2, 3, 4])
    for bad in (torch.tensor([0, 1, 2, 3, 5]), torch.tensor([0, 1, 2, 3, -1])):
        with pytest.raises(ValueError):
            F.hsigmoid_loss(x, bad, 5, weight, bias)
    with pytest.raises(ValueError):
        F.hsigmoid_loss(x, label, 1, weight, bias)
    with pytest.raises(ValueError):
        F.hsigmoid_loss(x, label, 6, weight, bias)  # weight needs 5 rows for 6 classes
    with pytest.raises(ValueError):
        F.hsigmoid_loss(x, label, 5, weight, bias, path_table=torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        F.hsigmoid_loss(x, label, 5, weight, bias, reduction="avg")


def test_nce_hand_worked_numbers():
    x = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    weight = torch.tensor([[0.2, 0.1], [-0.3, 0.4], [0.5, 0.5]], dtype=torch.float64)
    bias = torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64)
    noise_log_probs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    # s = [0.25, -0.7, 0.25], o = sigmoid(s) (Fluid), b = k * q = [1.0, 0.6, 0.4] with k = 2
    # negatives (classes 1 and 2)
    o_true, o_1, o_2 = 1 / (1 + math.exp(-0.25)), 1 / (1 + math.exp(0.7)), 1 / (1 + math.exp(-0.25))
    by_hand = (-math.log(o_true / (o_true + 1.0)) - math.log(0.6 / (o_1 + 0.6))
               - math.log(0.4 / (o_2 + 0.4)))
    assert by_hand == pytest.approx(2.33995, abs=1e-5)
    loss = F.nce_loss(x, torch.tensor([0]), weight, bias, torch.tensor([[1, 2]]), noise_log_probs,
                      reduction="none")
    torch.testing.assert_close(loss, torch.tensor([by_hand], dtype=torch.float64))


def test_nce_is_stable_for_large_logits_and_reduces_over_samples():
    generator = torch.Generator().manual_seed(0)
    x = (100 * torch.randn(4, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    noise = torch.randint(0, 6, (4, 5), generator=generator)
    log_q = torch.full((6,), -math.log(6), dtype=torch.float64)
    per_sample = nce_loss(x, torch.tensor([[0], [1], [2], [3]]), weight, None, noise, log_q, "none")
    assert torch.isfinite(per_sample).all()
    (grad,) = torch.autograd.grad(per_sample.sum(), x)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(nce_loss(x, torch.arange(4), weight, None, noise, log_q), per_sample.mean())
    summed = nce_loss(x, torch.arange(4), weight, None, noise, log_q, "sum")
    torch.testing.assert_close(summed, per_sample.sum())


def test_nce_errors():
    x, weight, bias = torch.randn(2, 3), torch.randn(4, 3), torch.randn(4)
    log_q = torch.full((4,), -math.log(4))
    noise = torch.tensor([[1, 2], [3, 0]])
    with pytest.raises(IndexError):
        F.nce_loss(x, torch.tensor([0, 4]), weight, bias, noise, log_q)
    with pytest.raises(IndexError):
        F.nce_loss(x, torch.tensor([0, 1]), weight, bias, noise + 2, log_q)
    with pytest.raises(ValueError):
        F.nce_loss(x, torch.tensor([0, 1]), weight, bias, noise, log_q[:3])
    with pytest.raises(ValueError):
        F.nce_loss(x, torch.tensor([0, 1, 2]), weight, bias, noise, log_q)


# --- fusedloss.paddle_sequence: Fluid layouts and shapes ------------------------------------

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
    x, weight, bias = _hsigmoid_data(4)
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


# --- fusedloss.nn_sequence modules ----------------------------------------------------------

def test_ctc_module_matches_torch():
    generator = torch.Generator().manual_seed(0)
    log_probs = torch.randn(6, 2, 4, generator=generator).log_softmax(-1)
    args = (log_probs, torch.tensor([[1, 2], [3, 3]]), [6, 5], [2, 2])
    for kwargs in ({}, {"reduction": "sum"}, {"blank": 3, "zero_infinity": True}):
        torch.testing.assert_close(nn_sequence.CTCLoss(**kwargs)(*args), torch.nn.CTCLoss(**kwargs)(*args))


@pytest.mark.parametrize("is_custom", [False, True])
def test_hsigmoid_module_forward_backward(is_custom):
    torch.manual_seed(0)
    module = nn_sequence.HSigmoidLoss(3, 6, is_custom=is_custom)
    num_nodes = 6 if is_custom else 5
    assert module.weight.shape == (num_nodes, 3) and module.bias.shape == (num_nodes,)
    x, label = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 5, 2, 3])
    paths = (torch.tensor([[0, 5, -1]] * 4), torch.tensor([[1, 0, -1]] * 4)) if is_custom else ()
    module(x, label, *paths).backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, module.weight, module.bias))
    assert nn_sequence.HSigmoidLoss(3, 6, bias=False).bias is None


@pytest.mark.parametrize("sampler", ["uniform", "log_uniform", "custom"])
def test_nce_module_samplers_and_forward_backward(sampler):
    torch.manual_seed(0)
    if sampler == "custom":
        sampler = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    module = nn_sequence.NCELoss(8, 3, num_neg_samples=5, sampler=sampler)
    probs = module.noise_log_probs.exp()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    if isinstance(sampler, str) and sampler == "log_uniform":  # Zipf: log((c + 2) / (c + 1)) / log(C + 1)
        assert probs[0].item() == pytest.approx(math.log(2) / math.log(9), rel=1e-6)
        assert (probs[:-1] > probs[1:]).all()
    x = torch.randn(6, 3, requires_grad=True)
    loss = module(x, torch.randint(0, 8, (6,)))
    loss.backward()
    assert loss.shape == () and torch.isfinite(loss)
    assert all(torch.isfinite(t.grad).all() for t in (x, module.weight, module.bias))
    with pytest.raises(ValueError):
        nn_sequence.NCELoss(8, 3, sampler="zipf")
