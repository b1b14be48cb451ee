"""The shape of the code's imports, read from the source with `ast`.

- One name per module: the project's code imports its modules as `crossan.zoo...`,
  `crossan.kernels...` and `crossan.export...`, never by the bare folder names `zoo`, `kernels`
  or `export`. From the repository root those bare names resolve to the same files loaded a
  second time as other modules (other classes, a second model registry).
- Layers: no two folders import each other, directly or through others. The folders are the
  top-level parts (`zoo`, `kernels`, `export`) and the subfolders of `zoo/`; the graph of which
  folder imports which has no cycle.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from source_code import REPO, imported_modules, project_files

BARE_NAMES = ("zoo", "kernels", "export")


def bare_imports(source: str) -> list[tuple[int, str]]:
    """The imports in `source` that name a project folder without `crossan.`."""
    return sorted({(line, name) for line, name in imported_modules(source) if name.split(".")[0] in BARE_NAMES})


def folder_of(module: str, root: Path = REPO) -> str | None:
    """The layer folder a `crossan...` module belongs to: `zoo/<sub>` for a zoo subfolder,
    else the top-level part (`zoo` for a module at zoo/'s root, `kernels`, `export`); None for
    other modules (the `crossan` package itself, third-party ones)."""
    parts = module.split(".")
    if parts[0] != "crossan" or len(parts) < 2 or parts[1] not in BARE_NAMES:
        return None
    if parts[1] == "zoo" and len(parts) > 2 and (root / "zoo" / parts[2]).is_dir():
        return f"zoo/{parts[2]}"
    return parts[1]


def folder_graph(root: Path = REPO) -> dict[str, set[str]]:
    """{folder: the other folders its modules import} over zoo/, kernels/ and export/."""
    graph: dict[str, set[str]] = {}
    for path in project_files(root):
        relative = path.relative_to(root)
        if relative.parts[0] not in BARE_NAMES:
            continue
        source_folder = folder_of("crossan." + ".".join(relative.with_suffix("").parts), root)
        assert source_folder is not None
        targets = graph.setdefault(source_folder, set())
        for _, module in imported_modules(path.read_text(encoding="utf-8")):
            target = folder_of(module, root)
            if target is not None and target != source_folder:
                targets.add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes (first == last), or None when it has none."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_project_imports_its_modules_by_one_name() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in project_files()
        for line, name in bare_imports(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "import these as crossan.<name>:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import zoo.models",
        "from export.spec import ExportSpec",
        "def f():\n    from kernels import gated_mix_down\n",
        "import export",
    ],
)
def test_a_bare_import_is_found(source: str) -> None:
    assert bare_imports(source)


def test_imports_of_the_installed_name_and_of_other_packages_pass() -> None:
    assert (
        bare_imports(
            "import crossan.zoo.models\nfrom crossan.export import spec\nimport exporter\nfrom zookeeper import x\n"
        )
        == []
    )


def test_no_two_folders_import_each_other() -> None:
    graph = folder_graph()
    assert {"zoo/core", "zoo/models", "zoo/cli", "kernels", "export"} <= set(graph)  # the graph was read
    cycle = find_cycle(graph)
    assert cycle is None, "these folders import each other: " + " -> ".join(cycle or ())


def test_the_lowest_layer_imports_no_other_folder() -> None:
    assert folder_graph()["zoo/core"] == set()


def test_a_cycle_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_project_file_is_read() -> None:
    """The checks above see the code: the scripts, the links' targets once, and the tests."""
    names = {str(path.relative_to(REPO)) for path in project_files()}
    assert {
        "train.py",
        "zoo/models/registry.py",
        "kernels/gated_mix_down.py",
        "export/serve.py",
        "crossan/command.py",
        "tests/test_import_structure.py",
    } <= names
    assert not any(name.startswith(("crossan/zoo", "crossan/kernels", "crossan/export")) for name in names)


def test_the_tests_see_no_second_copy_of_the_project() -> None:
    """In the test process the project's folders do not import by their bare names, and `kernels`
    is the installed distribution that transformers needs (the repository root is not on sys.path,
    even under `python -m pytest` from the root)."""
    import importlib.util

    assert importlib.util.find_spec("zoo") is None
    assert importlib.util.find_spec("export") is None
    kernels = importlib.util.find_spec("kernels")
    assert kernels is None or "site-packages" in str(kernels.origin or list(kernels.submodule_search_locations or ()))
