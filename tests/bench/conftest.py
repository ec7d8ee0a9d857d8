"""Experiments kept in bench/ run on the same trained digits baseline as the method tests; bench/ is put on the path
as its scripts see it."""

import sys
from pathlib import Path

from tests.core.methods.conftest import digits, digits_model, trained_digits_state  # noqa: F401  (fixtures)

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
