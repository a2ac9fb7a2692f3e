"""The dependency arrow: no kernel module imports the reference (the oracle the kernels are
judged by) or the layers that call the kernels (dispatcher, functional, nn, ...). A kernel module
may import its own package and the shared leaves below every layer, which themselves import
nothing of fusedloss. Read from the source, so dynamic imports by name are caught too."""
import ast
import pathlib

import pytest

import fusedloss

PACKAGE = pathlib.Path(fusedloss.__file__).parent
KERNELS = "fusedloss.triton_kernels"
SHARED_LEAVES = {"fusedloss._autocast", "fusedloss._backend", "fusedloss._reduction"}


def _module_name(path):
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def _fusedloss_imports(path):
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return _imports_in(path.read_text(), package)


def _imports_in(source, package):
    """Every fusedloss module `source` (a module of `package`) imports, relative imports
    resolved, and every string naming one (importlib.import_module("fusedloss.reference"))."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found.add(module)
            # `from . import crf` names a module; `from ._common import x` names an attribute
            found.update(f"{module}.{alias.name}" for alias in node.names
                         if (PACKAGE.parent / f"{module}.{alias.name}".replace(".", "/")).with_suffix(".py").exists())
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("fusedloss.") and " " not in node.value:
                found.add(node.value)
    return {module for module in found if module == "fusedloss" or module.startswith("fusedloss.")}


KERNEL_MODULES = sorted((PACKAGE / "triton_kernels").glob("*.py"))


@pytest.mark.parametrize("path", KERNEL_MODULES, ids=lambda path: path.name)
def test_kernel_modules_import_only_their_package_and_shared_leaves(path):
    outside = {module for module in _fusedloss_imports(path)
               if module != KERNELS and not module.startswith(KERNELS + ".")}
    assert outside <= SHARED_LEAVES, f"{path.name} imports {sorted(outside - SHARED_LEAVES)}"


@pytest.mark.parametrize("leaf", sorted(SHARED_LEAVES))
def test_shared_leaves_import_nothing_of_fusedloss(leaf):
    path = PACKAGE.parent / (leaf.replace(".", "/") + ".py")
    assert _fusedloss_imports(path) == set()


def test_the_scan_sees_what_the_rule_forbids():
    # the checker itself: the dispatcher and the functional layer through relative imports, the
    # reference by name
    source = ("import importlib\nfrom .._dispatch import call\nfrom .. import functional\n"
              "from ._common import round_to\nimportlib.import_module('fusedloss.reference')\n")
    assert _imports_in(source, KERNELS) == {
        "fusedloss._dispatch", "fusedloss", "fusedloss.functional",
        "fusedloss.triton_kernels._common", "fusedloss.reference"}
