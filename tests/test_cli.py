"""`run_cli`: a user error is one `error: ...` line and exit status 2; a bug keeps its traceback."""

from __future__ import annotations

import traceback

import pytest
from scripts import run_script

from crossan.zoo.cli.options import run_cli
from crossan.zoo.core.errors import ConfigError, MissingFileError, UserError
from crossan.zoo.data import DataError


def _run_failing(error: BaseException, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit status and stderr lines of `run_cli` over a main that raises `error`."""

    def main() -> int:
        raise error

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    return exit_info.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    "error, line",
    [
        (UserError("the thing is wrong"), "error: the thing is wrong"),
        (ConfigError("--pooling expects KEY=VALUE, got 'text'"), "error: --pooling expects KEY=VALUE, got 'text'"),
        (MissingFileError("weights/x: not a run directory"), "error: weights/x: not a run directory"),
        (
            DataError("unknown item id 'i9'", "data/toy_pairs.tsv", 7),
            "error: data/toy_pairs.tsv:7: unknown item id 'i9'",
        ),
    ],
)
def test_user_error_prints_one_line_and_exits_2(
    error: UserError, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, stderr = _run_failing(error, capsys)
    assert status == 2
    assert stderr == [line]


def test_user_error_message_with_newlines_still_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, stderr = _run_failing(ConfigError("cannot load it\nsee the hub docs"), capsys)
    assert status == 2
    assert stderr == ["error: cannot load it see the hub docs"]


def test_success_exits_with_mains_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: 0)
    assert exit_info.value.code == 0
    assert capsys.readouterr().err == ""


def test_plain_value_error_is_a_bug_and_keeps_its_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> int:
        return int("not a number")

    with pytest.raises(ValueError, match="invalid literal") as info:
        run_cli(main)
    # The exception leaves run_cli untouched: its traceback still reaches the failing line in main.
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "main"
    assert "run_cli" in frames
    assert capsys.readouterr().err == ""


def test_train_without_data_root_is_one_line_end_to_end() -> None:
    result = run_script("train", "--preset", "crossan-t", "--data", "amazon")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: --data amazon needs --data-root DIR"]
