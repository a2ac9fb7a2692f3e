"""The catalog is the one list of losses: the public API, the kernels' registry and the README
name the same losses, and every entry's references resolve."""
import inspect

import pytest
import torch.nn.functional as TF

import fusedloss.functional as F
from fusedloss import catalog, reference, triton_kernels
from test_readme import readme_table


def test_catalog_functional_kernels_and_readme_agree():
    names = set(catalog.NAMES)
    assert len(names) == len(catalog.LOSSES)
    assert names == set(F.__all__)
    assert names == set(triton_kernels.KERNELS)
    assert names == {name for row_names, *_ in readme_table() for name in row_names}


@pytest.mark.parametrize("info", catalog.LOSSES, ids=catalog.NAMES)
def test_entry_resolves(info):
    assert info.function is getattr(F, info.name)
    assert callable(getattr(reference, info.name))
    assert info.arg_names == tuple(inspect.signature(info.function).parameters)[:len(info.arg_names)]
    assert info.twin is None or info.twin == info.name  # a twin keeps torch's name
    assert not (info.twin and info.composition), "a twin is torch's baseline already"
    assert set(info.extras) <= set(inspect.signature(info.function).parameters)
    if info.twin is not None and info.name != "linear_cross_entropy":  # torch >= 2.10 only
        assert callable(getattr(TF, info.twin))
    module = info.strategies()
    assert callable(getattr(module, info.valid)) and callable(getattr(module, info.invalid))


def test_unknown_name_is_a_value_error_naming_the_known_losses():
    with pytest.raises(ValueError, match="cross_entropy"):
        catalog.get("cross_entropyy")
