"""Generic code names no model family: it asks the model, its config, the preprocessor or the index
parameters what it needs, and each class says it (`stored_features`, `search_space`,
`adapter_parameters`, `example_inputs`, `empty_index`, ...).

Read with `ast` from every .py file of the project outside `zoo/models/`: zoo/, export/, kernels/,
benchmarks/, crossan/ (its links to the folders not followed), train.py, evaluate.py and tests/,
except the tests of zoo/models itself: tests/test_models.py and tests/test_<name>.py for each model
file zoo/models/<name>.py (a test of a model may name the model it tests). A file fails, named with
the line, for

(a) a comparison (`==`, `!=`, `in`, `not in`; also a `match` case) between an architecture name (a
    name, attribute or call whose name holds `architecture`, or a `["architecture"]` or
    `.get("architecture")` lookup) and a string literal or a tuple, list or set of them;
(b) an `isinstance` or `issubclass` against a class of one model family: a model or model-config
    class of the project (the subclasses of `Recommender` and `RecommenderConfig`; the two contracts
    themselves may be asked for), a preprocessor class (`PREPROCESSORS` of export/preprocessing.py)
    or an index-parameter class (the members of `IndexParameters` of export/ann_index.py).
"""

from __future__ import annotations

import ast
import typing
from collections.abc import Iterator
from pathlib import Path

from source_code import REPO, project_files

MODELS_FOLDER = Path("zoo", "models")
COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
TYPE_CHECKS = ("isinstance", "issubclass")


def checked_files(root: Path = REPO) -> list[Path]:
    """The files the rules apply to under `root` (see the module docstring)."""
    model_tests = {"test_models.py"} | {f"test_{path.stem}.py" for path in (root / MODELS_FOLDER).glob("*.py")}

    def exempt(relative: Path) -> bool:
        return relative.is_relative_to(MODELS_FOLDER) or (relative.parts[0] == "tests" and relative.name in model_tests)

    return [path for path in project_files(root) if not exempt(path.relative_to(root))]


def family_classes() -> set[str]:
    """Names of the project's classes that belong to one model family (rule b)."""
    import crossan.zoo.models  # noqa: F401  (imports, so registers, every model file)
    from crossan.export.ann_index import IndexParameters
    from crossan.export.preprocessing import PREPROCESSORS
    from crossan.zoo.models.config import RecommenderConfig
    from crossan.zoo.models.recommender import Recommender

    def subclasses(base: type) -> Iterator[type]:
        for child in base.__subclasses__():
            yield child
            yield from subclasses(child)

    models = {
        c for base in (Recommender, RecommenderConfig) for c in subclasses(base) if c.__module__.startswith("crossan.")
    }  # not the made-up models a test defines
    return {c.__name__ for c in (*models, *PREPROCESSORS.values(), *typing.get_args(IndexParameters))}


def _names_architecture(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return "architecture" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "architecture" in node.attr.lower()
    if isinstance(node, ast.Subscript):
        return _is_string(node.slice) and "architecture" in node.slice.value.lower()
    if isinstance(node, ast.Call):
        looked_up = (
            isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and _is_string(node.args[0])
            and "architecture" in node.args[0].value.lower()
        )
        return looked_up or _names_architecture(node.func)
    return False


def _is_string(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _is_literal(node: ast.AST) -> bool:
    """A string literal, or a non-empty tuple, list or set of them."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_is_string(e) for e in node.elts)
    return _is_string(node)


def _class_names(node: ast.AST) -> Iterator[str]:
    """The class names an `isinstance` second argument names: `C`, `module.C`, `(C, D)`, `C | D`."""
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.Attribute):
        yield node.attr
    elif isinstance(node, ast.Tuple):
        for element in node.elts:
            yield from _class_names(element)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        yield from _class_names(node.left)
        yield from _class_names(node.right)


def violations(source: str, filename: str, classes: set[str]) -> list[str]:
    """`filename:line: what` for every place `source` breaks rule (a) or (b), in line order; `classes`
    from `family_classes`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for left, op, right in zip(sides[:-1], node.ops, sides[1:], strict=True):
                if isinstance(op, COMPARISONS) and (
                    (_names_architecture(left) and _is_literal(right))
                    or (_is_literal(left) and _names_architecture(right))
                ):
                    found.append((node.lineno, f"compares an architecture with a literal name ({ast.unparse(node)})"))
        elif isinstance(node, ast.Match) and _names_architecture(node.subject):
            for case in node.cases:
                if isinstance(case.pattern, ast.MatchValue) and _is_string(case.pattern.value):
                    found.append((case.pattern.lineno, f"matches an architecture against {case.pattern.value.value!r}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in TYPE_CHECKS
            and len(node.args) == 2
        ):
            named = sorted(set(_class_names(node.args[1])) & classes)
            if named:
                found.append((node.lineno, f"{node.func.id} against {', '.join(named)} ({ast.unparse(node)})"))
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


def tree_violations(root: Path = REPO) -> list[str]:
    """Every violation in the checked files under `root` (the project, or another checkout of it)."""
    classes = family_classes()
    return [
        v
        for path in checked_files(root)
        for v in violations(path.read_text(encoding="utf-8"), str(path.relative_to(root)), classes)
    ]


def test_generic_code_names_no_model_family() -> None:
    found = tree_violations()
    assert not found, "generic code names a model family; ask the class instead:\n" + "\n".join(found)


def test_the_checker_flags_each_kind_of_violation() -> None:
    bad = (
        'if config.architecture == "end-to-end": pass\n'
        'ok = "crossan" != preset_architecture(name)\n'
        'ok = values["architecture"] not in ("iisan", "sasrec-id")\n'
        'ok = recorded.get("architecture") in {"crossan"}\n'
        'match config.architecture:\n    case "iisan": pass\n'
        "ok = isinstance(preprocessor, ImagePreprocessor)\n"
        "ok = issubclass(kind, (int, export.ann_index.HnswParameters))\n"
        "ok = isinstance(config, SideNetworkConfig | SASRecIDConfig)\n"
        "ok = isinstance(model, Crossan)\n"
    )
    found = violations(bad, "bad.py", family_classes())
    assert [v.split(":")[1] for v in found] == [str(line) for line in range(1, 11) if line != 5], found
    assert "ImagePreprocessor" in found[5] and "HnswParameters" in found[6]
    assert "SASRecIDConfig, SideNetworkConfig" in found[7] and "Crossan" in found[8]


def test_the_checker_lets_generic_questions_pass() -> None:
    good = (
        "ok = config.stored_features is StoredFeatures.INPUTS\n"
        "ok = config.architecture == recorded_architecture\n"
        'ok = {"architecture": config.architecture}\n'
        "ok = isinstance(model, Recommender) and isinstance(config, RecommenderConfig)\n"
        "ok = isinstance(value, (int, str, HoulsbyAdapter))\n"
        'ok = modality == "text"\n'
    )
    assert violations(good, "good.py", family_classes()) == []


def test_the_checker_reads_the_generic_code_and_not_the_models() -> None:
    read = {path.relative_to(REPO).as_posix() for path in checked_files()}
    assert {
        "train.py",
        "zoo/tune/space.py",
        "export/backbones.py",
        "export/ann_index.py",
        "kernels/backends.py",
        "benchmarks/efficiency.py",
        "crossan/command.py",
        "tests/test_tune.py",
    } <= read
    assert not [name for name in read if name.startswith(("zoo/models/", "crossan/zoo/"))]
    assert not {"tests/test_models.py", "tests/test_end_to_end.py"} & read


def test_every_family_class_is_known_to_the_checker() -> None:
    classes = family_classes()
    assert {
        "Crossan",
        "IISAN",
        "SASRecID",
        "EndToEnd",
        "SideNetworkRecommender",
        "CrossanConfig",
        "EndToEndConfig",
        "SideNetworkConfig",
        "TextPreprocessor",
        "AudioPreprocessor",
        "HnswParameters",
        "IvfParameters",
    } <= classes
    assert not {"Recommender", "RecommenderConfig"} & classes
