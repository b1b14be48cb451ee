"""The project's own Python files and their imports, for the tests that read the code with `ast`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Where the project's own Python lives (the virtual environment and caches excluded).
CODE_ROOTS = ("zoo", "kernels", "export", "crossan", "benchmarks", "tests")
TOP_LEVEL_SCRIPTS = ("train.py", "evaluate.py")


def project_files(root: Path = REPO) -> list[Path]:
    """Every .py file of the project under `root`; the links in crossan/ (the same files again)
    are not followed."""
    files = [root / name for name in TOP_LEVEL_SCRIPTS if (root / name).is_file()]
    for folder in CODE_ROOTS:
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root)
            if "__pycache__" not in relative.parts and not _through_link(root, relative):
                files.append(path)
    return files


def _through_link(root: Path, relative: Path) -> bool:
    return any((root / Path(*relative.parts[:depth])).is_symlink() for depth in range(1, len(relative.parts)))


def imported_modules(source: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import statement in `source`, nested ones included;
    `from a import b` yields `a` and `a.b` (b may be a module)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
