"""The house rule on the product's code that lint does not state: no function body of the package runs over
MAX_FUNCTION_LINES lines (ruff's C901 holds complexity to radon's grade C). A signature is not counted (a command's
options are declared there, one a line), nor are the migrations (a schema written out, table by table)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "cli", "core", "store", "worker", "squeezer")  # squeezer/ links the others under one name
MAX_FUNCTION_LINES = 60


def _bodies(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.end_lineno - node.body[0].lineno + 1  # type: ignore[operator]


def test_no_function_of_the_package_is_longer_than_a_screen():
    files = sorted(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))
    assert len(files) > 100, "the packages' sources were not found"
    long = [
        f"{path.relative_to(REPO)}:{name} ({lines} lines)"
        for path in files
        for name, lines in _bodies(path)
        if lines > MAX_FUNCTION_LINES
    ]
    assert not long, long
