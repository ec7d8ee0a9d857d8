"""The documentation holds what it promises: the generated figures match their result files, the README stays a
README, and every file it points to exists."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150


def test_benchmarks_md_and_the_readme_headline_are_what_the_results_generate():
    check = subprocess.run(
        [sys.executable, "bench/report.py", "--check"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr


def test_every_result_file_has_a_section_and_the_headline_reads_its_figures():
    page = (REPO / "docs" / "benchmarks.md").read_text()
    for result in (REPO / "bench" / "results").glob("*.json"):
        assert f"`bench/results/{result.name}`" in page
    readme = (REPO / "README.md").read_text()
    assert "| LeNet-5 / Fashion-MNIST (reference) | 89.62 | 88.78 | 0.84 | 3,782 | **65.3×** |" in readme


def test_the_readme_is_short_and_its_links_exist():
    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= README_MAX_LINES
    assert lines[3].startswith("bash scripts/demo.sh") and lines[4].startswith("bash scripts/test.sh")
    for path in set(re.findall(r"`((?:docs|bench|scripts|requirements)/[\w./-]+|[A-Z]+\.md)`", readme)):
        assert (REPO / path.rstrip("/")).exists(), path
