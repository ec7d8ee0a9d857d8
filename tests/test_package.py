"""The wheel as a user installs it: built from the repository, installed (not editable) into fresh virtualenvs, run
from outside the repository. One venv sees only the engine's dependencies (`pip install squeezer`), the other the
service's too (`pip install 'squeezer[service]'`); both borrow the packages installed in this test's environment, so
nothing is downloaded."""

import importlib.metadata
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from squeezer.core.samples import ensure_sample_model

pytestmark = pytest.mark.slow  # a wheel build, two venvs and a compress in fresh processes: about a minute

REPO = Path(__file__).resolve().parents[1]
WEB_AND_QUEUE_DISTRIBUTIONS = {
    "fastapi", "uvicorn", "starlette", "celery", "kombu", "redis", "sqlalchemy", "alembic", "psycopg",
    "psycopg-binary", "psycopg-pool", "boto3", "botocore", "prometheus-client",
}  # fmt: skip
WEB_AND_QUEUE_MODULES = {
    "fastapi", "uvicorn", "starlette", "celery", "kombu", "redis", "sqlalchemy", "alembic", "psycopg",
    "psycopg_pool", "boto3", "botocore", "prometheus_client",
}  # fmt: skip
# A compress of seconds: one pruning level, no fine-tuning, a budget it cannot miss.
TINY_COMPRESS = [
    "--device", "cpu", "--max-drop", "100", "--epochs-per-step", "0",
    "--option", "lwct.sparsity=0.5", "--option", "lwct.prune_epochs=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the checkout's files: setuptools' build/ folder in the repository could hold modules
    deleted since, and parallel builds would share it."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    files = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(files, cwd=REPO, check=True, capture_output=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if os.path.lexists(REPO / name):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name, follow_symlinks=False)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([*command, str(source), "-w", str(out)], check=True)
    (built,) = out.glob("squeezer-*.whl")
    return built


def _base_requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist entries that apply without any extra: what `pip install squeezer` installs."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
    requirements = [
        Requirement(line.split(":", 1)[1]) for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def _installed_closure(requirements: list[Requirement]) -> set[str]:
    """Every installed distribution those requirements pull in, through each one's own (marker-applied) requirements."""
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.distribution(requirement.name).requires or []
        except importlib.metadata.PackageNotFoundError:  # a platform's optional dependency, absent here
            continue
        for line in requires:
            nested = Requirement(line)
            extras = ("", *requirement.extras)
            if nested.marker is None or any(nested.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(nested)
    return {name for name, _ in seen}


def _engine_site_packages(distributions: set[str], directory: Path) -> Path:
    """A folder showing only `distributions`' files of this environment (links to them): the engine alone."""
    directory.mkdir()
    for name in distributions:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for top in {f.parts[0] for f in files if f.parts[0] != ".."}:
            source = Path(sysconfig.get_paths()["purelib"]) / top
            if source.exists() and not (directory / top).exists():
                (directory / top).symlink_to(source)
    return directory


def _fresh_venv(directory: Path, wheel: Path, site_packages: Path) -> Path:
    """A virtualenv whose dependencies come from `site_packages` (a .pth line) and holding the wheel, installed."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    (purelib,) = directory.glob("lib/python*/site-packages")
    (purelib / "dependencies.pth").write_text(f"{site_packages}\n")
    install = [sys.executable, "-m", "pip", "--python", str(directory / "bin" / "python"), "install"]
    subprocess.run([*install, "--no-deps", "--no-index", "-q", str(wheel)], check=True)
    return directory / "bin"


def _run(bin_dir: Path, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SQUEEZER_", "VIRTUAL_ENV"))}
    environment |= {"OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    if "SQUEEZER_CACHE_DIR" in os.environ:  # the sample model this test run already trained
        environment["SQUEEZER_CACHE_DIR"] = os.environ["SQUEEZER_CACHE_DIR"]
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=environment, capture_output=True, text=True)


def test_the_engine_requirements_pull_no_web_or_queue_package(wheel):
    base = _base_requirements(wheel)
    assert {canonicalize_name(r.name) for r in base} & WEB_AND_QUEUE_DISTRIBUTIONS == set()
    assert "torch" in {r.name for r in base} and _installed_closure(base) & WEB_AND_QUEUE_DISTRIBUTIONS == set()
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"squeezer/migrations/alembic.ini", "squeezer/library.py", "squeezer/core/pipeline.py"} <= names
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"squeezer"}  # no top-level `core`, `api`…


def test_the_engine_alone_compresses_and_service_commands_name_the_extra(wheel, tmp_path):
    sample = ensure_sample_model("digits")[0]
    engine = _engine_site_packages(_installed_closure(_base_requirements(wheel)), tmp_path / "engine-site")
    bin_dir = _fresh_venv(tmp_path / "engine-venv", wheel, engine)
    work = tmp_path / "work"
    work.mkdir()

    imports = "import squeezer, squeezer.core.pipeline, squeezer.cli.main, sys; print(squeezer.__file__); "
    imports += f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {WEB_AND_QUEUE_MODULES!r}))"
    answer = _run(bin_dir, ["python", "-c", imports], work)
    assert answer.returncode == 0, answer.stderr
    location, loaded = answer.stdout.splitlines()
    assert Path(location).is_relative_to(tmp_path / "engine-venv") and loaded == "[]"

    compressed = _run(bin_dir, ["squeezer", "compress", str(sample), "--data", "sample:digits", *TINY_COMPRESS], work)
    assert compressed.returncode == 0, compressed.stdout + compressed.stderr
    assert (work / "squeezer-results" / "model.sqz").is_file() and (work / "squeezer-results" / "report.html").is_file()

    for command in (
        ["migrate"],
        ["serve", "--data-dir", str(work / "service")],
        ["demo", "--out", str(work / "demo")],
        ["keys", "list", "--tenant", "acme"],
    ):
        refused = _run(bin_dir, ["squeezer", *command], work)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.count("\n") == 1 and "pip install 'squeezer[service]'" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_the_service_install_migrates_a_database(wheel, tmp_path):
    bin_dir = _fresh_venv(tmp_path / "service-venv", wheel, Path(sysconfig.get_paths()["purelib"]))
    work = tmp_path / "work"
    work.mkdir()
    database = work / "squeezer.db"
    migrated = _run(bin_dir, ["squeezer", "migrate"], work, SQUEEZER_DATABASE_URL=f"sqlite:///{database}")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"alembic_version", "jobs", "artifacts"} <= tables
    located = _run(bin_dir, ["python", "-c", "import squeezer.store.migrate as m; print(m.__file__)"], work)
    assert Path(located.stdout.strip()).is_relative_to(tmp_path / "service-venv"), located.stderr
