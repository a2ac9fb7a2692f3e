"""Hierarchical sigmoid against hand-worked numbers: the default tree, custom paths, errors."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import fusedloss.functional as F
from fusedloss.reference.hsigmoid import default_paths, hsigmoid_loss


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


def hsigmoid_data(num_nodes, batch=5, dim=3, seed=0):
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
    x, weight, bias = hsigmoid_data(4)
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
    x, weight, bias = hsigmoid_data(num_classes - 1, batch=1, seed=seed)
    losses = hsigmoid_loss(x.expand(num_classes, -1), torch.arange(num_classes), num_classes, weight,
                           bias, reduction="none")
    torch.testing.assert_close(torch.exp(-losses).sum(), torch.tensor(1.0, dtype=torch.float64))


def test_custom_tree():
    x, weight, bias = hsigmoid_data(3, batch=2)
    path_table = torch.tensor([[0, 2, -1], [1, -1, -1]])
    path_code = torch.tensor([[1, 0, -1], [0, -1, -1]])
    loss = F.hsigmoid_loss(x, torch.tensor([0, 1]), 4, weight, bias, path_table, path_code, reduction="none")
    expected = [_explicit_hsigmoid(x[0].tolist(), [(0, 1), (2, 0)], weight.tolist(), bias.tolist()),
                _explicit_hsigmoid(x[1].tolist(), [(1, 0)], weight.tolist(), bias.tolist())]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))


def test_hsigmoid_errors():
    x, weight, bias = hsigmoid_data(4)
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
