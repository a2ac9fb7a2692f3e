"""The README's loss table is the catalog's: every row's names, torch twin, status and notes."""
import pathlib
import re

from fusedloss import _dispatch, catalog

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def readme_table():
    """(names, twin, status, notes) of each row of the README's loss table."""
    rows = re.findall(r"^\| (`[^|]+`) \| ([^|]+) \| (kernel|reference) \|([^|]*)\|$",
                      README.read_text(), re.M)
    return [(re.findall(r"`(\w+)`", names), twin, status, notes.strip())
            for names, twin, status, notes in rows]


def test_status_column_matches_the_kernels():
    rows = readme_table()
    assert len(rows) >= 19
    for names, _, status, _ in rows:
        for name in names:
            assert status == ("kernel" if _dispatch.has_kernel(name) else "reference"), name


def test_rows_are_the_catalogs():
    assert [(names, twin, notes) for names, twin, _, notes in readme_table()] == catalog.readme_rows()
