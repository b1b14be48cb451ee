"""Checks of the documentation (README.md and docs/*.md):

- every relative link resolves to an existing file or folder, and a `#anchor` into a markdown
  file matches one of its headings under GitHub's slug rules;
- every command line in the code blocks (`python train.py`, `python evaluate.py`,
  `python benchmarks/<x>.py`, `python -m crossan.<module>`, `crossan <subcommand>`) names only
  options that the command's `--help` lists (each distinct command's `--help` runs once, two at
  a time);
- README.md stays short and links every file of docs/.

The checking functions take the file's path, so they also work on a file that is not in place
yet (a new README, say).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import pytest

from crossan.command import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
DOC_FILES = [README, *DOCS]
# Files whose command lines are checked against `--help`: each distinct command costs one
# interpreter start (six in all, about 15 s on two cores; `evaluate.py` and export need no PyTorch).
COMMAND_FILES = DOC_FILES
MAX_README_LINES = 220
HELP_WORKERS = 2
HELP_TIMEOUT_S = 300

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+).*?\1")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
COMMAND = re.compile(
    r"^\s*(?:python3?\s+(train\.py|evaluate\.py|benchmarks/[\w-]+\.py|-m\s+crossan(?:\.\w+)+)"
    rf"|(crossan\s+(?:{'|'.join(SUBCOMMANDS)})))(?=\s|$)(.*)$"
)
OPTION = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def split_code(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The lines of a markdown file as (line number, text): those outside fenced code blocks and
    those inside them (fence lines belong to neither)."""
    prose: list[tuple[int, str]] = []
    code: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        marker = re.match(r"\s*(`{3,}|~{3,})", line)
        if marker and (fence is None or marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence)):
            fence = marker.group(1) if fence is None else None
            continue
        (prose if fence is None else code).append((number, line))
    return prose, code


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (link targets, inline-code backticks and
    HTML tags dropped) in lower case, punctuation other than hyphens and spaces removed
    (underscores and other word characters stay, as on GitHub), spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a markdown file's headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in split_code(path)[0]:
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(result)


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link outside code blocks and inline code."""
    return [
        (number, target) for number, line in split_code(path)[0] for target in LINK.findall(INLINE_CODE.sub("", line))
    ]


def broken_links(path: Path) -> list[str]:
    """One line per relative link of `path` that does not resolve: a missing file or folder, or
    an anchor that matches no heading of the markdown file it points into."""
    problems = []
    for number, target in links(path):
        if SCHEME.match(target):
            continue  # https:, mailto:, ...
        file_part, _, anchor = target.partition("#")
        resolved = path if not file_part else path.parent / unquote(file_part)
        where = f"{_relative(path)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: {_relative(resolved)} does not exist")
        elif anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
            problems.append(f"{where}: no heading of {_relative(resolved)} has the anchor #{anchor}")
    return problems


def command_lines(path: Path) -> list[tuple[int, str, str]]:
    """(line number, script, text) of every command line in the code blocks of `path` that runs
    one of the project's scripts: `train.py`, `evaluate.py`, `benchmarks/<x>.py`,
    `-m crossan.<module>`, or a subcommand of the `crossan` command (script `crossan <sub>`).
    A line ending in a backslash continues on the next one."""
    commands = []
    pending: tuple[int, str] | None = None
    last = None
    for number, line in split_code(path)[1]:
        if pending and number == last + 1:
            start, text = pending[0], pending[1] + " " + line.strip()
        else:
            start, text = number, line
        last = number
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1])
            continue
        pending = None
        match = COMMAND.match(text)
        if match:
            commands.append((start, re.sub(r"\s+", " ", match.group(1) or match.group(2)), text))
    return commands


def shown(script: str) -> str:
    """The command line that runs `script` as the docs write it: `python train.py`, `crossan train`."""
    return script if script.startswith("crossan ") else f"python {script}"


@functools.cache
def help_text(script: str) -> str:
    """`--help` of a script (`train.py`, `-m crossan.export`, `crossan train`, ...), run once from
    the repository root with this interpreter (`crossan SUB` as `python -m crossan SUB`, the
    console script's code); wide columns so that argparse wraps nothing."""
    argv = [sys.executable, *(["-m"] if script.startswith("crossan ") else []), *script.split(), "--help"]
    result = subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT_S,
        check=False,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 0, f"{shown(script)} --help failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def fetch_help(scripts: set[str]) -> None:
    """Run the `--help` of every script not yet cached, HELP_WORKERS at a time."""
    missing = sorted(s for s in scripts if s not in _fetched)
    with ThreadPoolExecutor(max_workers=HELP_WORKERS) as pool:
        list(pool.map(help_text, missing))
    _fetched.update(missing)


_fetched: set[str] = set()


def unknown_options(path: Path) -> list[str]:
    """One line per `--option` of a command line in the code blocks of `path` that the
    command's script does not list in its `--help` (options named in the line's comment count
    too: they document the same command)."""
    commands = command_lines(path)
    fetch_help({script for _, script, _ in commands})
    problems = []
    for number, script, text in commands:
        listed = set(OPTION.findall(help_text(script)))
        for option in dict.fromkeys(OPTION.findall(text)):
            if option not in listed:
                problems.append(
                    f"{_relative(path)}:{number}: {shown(script)}: {option} is not an option (`{shown(script)} --help`)"
                )
    return problems


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def unlinked_docs(path: Path, docs: list[Path]) -> list[str]:
    """The docs files that `path` does not link to."""
    targets = {
        (path.parent / unquote(t.partition("#")[0])).resolve()
        for _, t in links(path)
        if not SCHEME.match(t) and t.partition("#")[0]
    }
    return [_relative(doc) for doc in docs if doc.resolve() not in targets]


@pytest.mark.parametrize("path", DOC_FILES, ids=_relative)
def test_relative_links_resolve(path: Path) -> None:
    assert path.is_file(), f"{_relative(path)} is missing"
    assert broken_links(path) == []


@pytest.fixture(scope="module")
def all_help() -> None:
    """Every script's `--help` that a documented command names, fetched once, in parallel."""
    fetch_help({script for path in COMMAND_FILES if path.is_file() for _, script, _ in command_lines(path)})


@pytest.mark.parametrize("path", COMMAND_FILES, ids=_relative)
def test_documented_command_lines_name_existing_options(path: Path, all_help: None) -> None:
    assert unknown_options(path) == []


def test_readme_finds_commands_to_check() -> None:
    """The check above has something to check: the README's main command is among them, in both
    its forms."""
    scripts = {script for _, script, _ in command_lines(README)}
    assert {"train.py", "crossan train"} <= scripts


def test_readme_is_short() -> None:
    assert line_count(README) <= MAX_README_LINES, (
        f"README.md has {line_count(README)} lines (at most {MAX_README_LINES}): move detail to docs/"
    )


def test_readme_links_every_doc() -> None:
    assert DOCS, "docs/ has no markdown files"
    assert unlinked_docs(README, DOCS) == []
