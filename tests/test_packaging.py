"""The project installs one import name, `crossan`, and works where users run it: from a wheel
installed away from the checkout, from any directory, and next to every installed distribution
(transformers' `kernels` among them)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("zoo", "kernels", "export")
BENCHMARKS = sorted(
    path
    for path in (REPO / "benchmarks").glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
)


def run_python(code: str, cwd: Path, flags: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (with `flags`) in `cwd`, with `env` added to the environment."""
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def subpackages(root: Path, name: str = "crossan") -> list[str]:
    """Every package under `root` (the folder of package `name`), by dotted name: folders holding
    Python files, or folders holding such folders, with or without an `__init__.py`."""
    folders = {
        folder
        for path in root.rglob("*.py")
        for folder in (path.parent, *path.parent.parents)
        if folder == root or root in folder.parents
    }
    return [
        ".".join((name, *folder.relative_to(root).parts))
        for folder in sorted(folders)
        if "__pycache__" not in folder.relative_to(root).parts
    ]


IMPORT_ALL = """
import importlib, sys
import transformers.modeling_utils
names = {names!r}
for name in names:
    module = importlib.import_module(name)
    location = getattr(module, "__file__", None) or list(module.__path__)[0]
    assert location.startswith({expected_root!r}), (name, location)
import kernels
assert "site-packages" in kernels.__file__, kernels.__file__
print(len(names))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from the checkout without its dependencies."""
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: a build writes build/ and *.egg-info into its source tree, and an
    # egg-info in the checkout would count as a second installed `crossan`.
    source = tmp_path_factory.mktemp("source") / "crossan"
    skipped_at_top = {".git", ".venv", ".cache", "weights", "build", "experiments", "data"}
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=lambda folder, names: {
            name
            for name in names
            if name == "__pycache__" or name.endswith(".egg-info") or (Path(folder) == REPO and name in skipped_at_top)
        },
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("crossan-*.whl")
    return built


def test_the_wheel_holds_one_package_with_its_tables_and_no_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"crossan"}
    tables = [name for name in names if name.startswith("crossan/zoo/experiments/tables/")]
    assert tables and all(name.endswith(".toml") for name in tables)
    assert not [name for name in names if "/tests/" in name or name.split("/")[-1].startswith("test_")]
    for part in PARTS:
        assert f"crossan/{part}/__init__.py" not in names  # namespace parts, as in the checkout


def test_the_wheel_imports_every_subpackage_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """Installed where the editable install is not visible (no site processing, so no editable
    finder; the dependencies come from this environment's site-packages as a plain path)."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    names = subpackages(target / "crossan")
    assert {"crossan", *(f"crossan.{part}" for part in PARTS), "crossan.zoo.layers"} <= set(names)
    code = IMPORT_ALL.format(names=names, expected_root=str(target))
    result = run_python(
        code, tmp_path, flags=("-S",), PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(len(names))]


def test_the_editable_install_imports_from_anywhere(tmp_path: Path) -> None:
    code = IMPORT_ALL.format(names=subpackages(REPO / "crossan"), expected_root=str(REPO))
    places = (tmp_path, REPO)
    with ThreadPoolExecutor(max_workers=len(places)) as pool:  # two interpreters, one per core
        results = list(pool.map(lambda cwd: run_python(code, cwd), places))
    for cwd, result in zip(places, results, strict=True):
        assert result.returncode == 0, (cwd, result.stderr[-3000:])


def test_the_version_is_written_once_and_both_installs_report_it(wheel: Path) -> None:
    """pyproject.toml takes the version from `crossan.__version__`: the wheel's metadata and the
    editable install's agree with it, and pyproject.toml writes no version of its own."""
    import crossan

    metadata = zipfile.ZipFile(wheel).read(f"crossan-{crossan.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {crossan.__version__}\n" in metadata
    assert importlib.metadata.version("crossan") == crossan.__version__
    project = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in project and "\nversion = " not in project.split("[tool.")[0]


def test_no_installed_import_name_is_shared_with_another_distribution() -> None:
    provided = importlib.metadata.packages_distributions()
    ours = sorted(name for name, distributions in provided.items() if "crossan" in distributions)
    assert ours == ["crossan"]
    assert set(provided["crossan"]) == {"crossan"}
    assert "kernels" in provided and "crossan" not in provided["kernels"]


def test_the_top_level_parts_are_namespace_folders() -> None:
    """A folder with an `__init__.py` would be a package named `kernels` (or `zoo`, `export`)
    whenever the repository root is on sys.path, hiding the distribution of that name."""
    for part in PARTS:
        assert (REPO / part).is_dir() and not (REPO / part / "__init__.py").exists()
        assert (REPO / "crossan" / part).resolve() == (REPO / part).resolve()


@pytest.mark.slow
def test_every_benchmark_answers_help_from_the_root_and_from_outside(tmp_path: Path) -> None:
    """Every script answers `--help` from the repository root and from elsewhere (the default
    run asks the documented ones from the root, in tests/test_docs.py)."""
    assert len(BENCHMARKS) >= 8
    runs = [(script, cwd) for script in BENCHMARKS for cwd in (REPO, tmp_path)]

    def help_of(run: tuple[Path, Path]) -> subprocess.CompletedProcess[str]:
        script, cwd = run
        return subprocess.run(
            [sys.executable, str(script), "--help"], cwd=cwd, capture_output=True, text=True, timeout=300
        )

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(help_of, runs))
    failures = [
        (script.name, str(cwd), result.stderr[-500:])
        for (script, cwd), result in zip(runs, results, strict=True)
        if result.returncode != 0 or "usage:" not in result.stdout
    ]
    assert not failures


def test_the_registry_imports_no_model_file() -> None:
    """Model files import the registry to register themselves; the registry module never imports
    them (`crossan.zoo.models` does, and re-exports the lookups, complete once it is imported)."""
    from source_code import imported_modules

    import crossan.zoo.models as models
    from crossan.zoo.models import registry

    imported = {name for _, name in imported_modules(Path(registry.__file__).read_text(encoding="utf-8"))}
    model_files = {
        f"crossan.zoo.models.{architecture_module}"
        for architecture_module in ("crossan", "iisan", "sasrec_id", "end_to_end")
    }
    assert imported & model_files == set()
    assert {cls.__module__ for _, cls in models.architectures().values()} == model_files
    assert models.list_models() == registry.list_models() != []
