"""The house rule on the product's code that lint does not state: no function of the package runs over
MAX_FUNCTION_LINES lines (ruff's C901 holds complexity to radon's grade C)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "squeezer"
MAX_FUNCTION_LINES = 60


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.end_lineno - node.lineno + 1  # type: ignore[operator]


def test_no_function_of_the_package_is_longer_than_a_screen():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{name} ({lines} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, lines in _functions(path)
        if lines > MAX_FUNCTION_LINES
    ]
    assert not long, long
