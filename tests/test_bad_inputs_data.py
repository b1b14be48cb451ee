"""Bad data files: headers, non-finite timestamps, empty, non-UTF-8, truncated files and wrong
field counts each stop with one line naming the file and line; no such line is ever read as a
user, an item or a time. A property test feeds every reader arbitrary bytes."""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossan.zoo.data import DataError, SequenceDataset, read_amazon, read_microlens
from crossan.zoo.data.dataset import MIN_INTERACTIONS
from crossan.zoo.data.media import read_audio

ITEMS_TSV = "P1\tOne\nP2\tTwo &amp; more\nP3\tThree\n"
USERS_TSV = "U1\tP1 P2 P3\nU2\tP3 P2 P1\n"
TITLES_CSV = 'P1,One\nP2,"Two, more"\nP3,Three\n'
PAIRS_CSV = "U1,P1,10\nU2,P3,11\nU1,P2,12\nU2,P2,13\nU1,P3,14\nU2,P1,15\n"
PAIRS_TSV = USERS_TSV


def amazon(root: Path, items: bytes | str = ITEMS_TSV, users: bytes | str = USERS_TSV) -> Path:
    """An Amazon-layout folder with these two files."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in (("items.tsv", items), ("users.tsv", users)):
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def microlens(
    root: Path, titles: bytes | str = TITLES_CSV, pairs: bytes | str = PAIRS_CSV, pairs_name: str = "ml_pairs.csv"
) -> Path:
    """A MicroLens-layout folder `ml` (titles and one pairs file, no media)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in (("ml_titles.csv", titles), (pairs_name, pairs)):
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def error_of(read: Callable[[], object]) -> str:
    with pytest.raises(DataError) as raised:
        read()
    assert "\n" not in str(raised.value)
    return str(raised.value)


def sequences(dataset: SequenceDataset) -> dict[str, list[str]]:
    return {user: [dataset.item_ids[i - 1] for i in dataset.sequence(u)] for u, user in enumerate(dataset.user_ids)}


# Headers: skipped where the layout documents one (the CSV files), an error elsewhere.


@pytest.mark.parametrize("header", ["item\ttitle", "item_id\ttitle", "ITEM_ID:token\ttitle:token_seq"])
def test_a_header_line_in_items_tsv_is_an_error_never_an_item(tmp_path: Path, header: str) -> None:
    root = amazon(tmp_path, items=f"{header}\n{ITEMS_TSV}")
    assert error_of(lambda: read_amazon(root)) == (
        f"{root / 'items.tsv'}:1: a header line ({header.replace(chr(9), '<TAB>')!r}); this file has none, every "
        "line is 'item<TAB>title': delete the line"
    )


@pytest.mark.parametrize("header", ["user\titems", "user_id:token\titem_id_list:token_seq"])
def test_a_header_line_in_users_tsv_is_an_error(tmp_path: Path, header: str) -> None:
    root = amazon(tmp_path, users=f"{header}\n{USERS_TSV}")
    assert error_of(lambda: read_amazon(root)).startswith(f"{root / 'users.tsv'}:1: a header line")


def test_a_header_line_in_microlens_pairs_tsv_is_an_error(tmp_path: Path) -> None:
    root = microlens(tmp_path, pairs=f"user\titem\n{PAIRS_TSV}", pairs_name="ml_pairs.tsv")
    assert error_of(lambda: read_microlens(root)).startswith(f"{root / 'ml_pairs.tsv'}:1: a header line")


@pytest.mark.parametrize(
    ("titles_header", "pairs_header"),
    [
        ("item,title", "user,item,timestamp"),
        ("item_id,title", "user_id,item_id,timestamp"),
        ("item_id:token,title:token_seq", "user_id:token,item_id:token,timestamp:float"),
    ],
)
def test_microlens_csv_headers_are_skipped_whatever_their_column_names(
    tmp_path: Path, titles_header: str, pairs_header: str
) -> None:
    plain = read_microlens(microlens(tmp_path / "plain"))
    headed = read_microlens(
        microlens(tmp_path / "headed", f"{titles_header}\n{TITLES_CSV}", f"{pairs_header}\n{PAIRS_CSV}")
    )
    assert headed.item_ids == plain.item_ids == ["P1", "P2", "P3"] and headed.titles == plain.titles
    assert sequences(headed) == sequences(plain) == {"U1": ["P1", "P2", "P3"], "U2": ["P3", "P2", "P1"]}


def test_a_header_below_the_first_line_of_a_csv_file_is_an_error(tmp_path: Path) -> None:
    root = microlens(tmp_path, titles=f"item,title\n{TITLES_CSV}item,title\n")
    assert error_of(lambda: read_microlens(root)) == (
        f"{root / 'ml_titles.csv'}:5: a header line below the first line ('item,title')"
    )


# Timestamps: a NaN would sort after every time and become the user's test target.


@pytest.mark.parametrize("stamp", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_a_non_finite_timestamp_is_an_error_naming_file_and_line(tmp_path: Path, stamp: str) -> None:
    root = microlens(tmp_path, pairs=f"U1,P3,{stamp}\n{PAIRS_CSV}")
    assert error_of(lambda: read_microlens(root)) == (
        f"{root / 'ml_pairs.csv'}:1: timestamp {stamp!r} is not a finite number"
    )


# Empty, non-UTF-8, truncated files and wrong field counts.


@pytest.mark.parametrize("name", ["items.tsv", "users.tsv"])
@pytest.mark.parametrize("content", [b"", b"\n \n\t\n"])
def test_an_empty_amazon_file_is_an_error(tmp_path: Path, name: str, content: bytes) -> None:
    root = amazon(tmp_path, **{name.split(".")[0]: content})
    assert error_of(lambda: read_amazon(root)) == f"{root / name}: file is empty"


@pytest.mark.parametrize("name", ["ml_titles.csv", "ml_pairs.csv"])
def test_an_empty_microlens_file_is_an_error(tmp_path: Path, name: str) -> None:
    root = microlens(tmp_path, **{"titles" if "titles" in name else "pairs": b""})
    assert error_of(lambda: read_microlens(root)) == f"{root / name}: file is empty"


@pytest.mark.parametrize(
    ("read", "write", "name"),
    [
        (read_amazon, lambda root, bad: amazon(root, users=bad), "users.tsv"),
        (read_amazon, lambda root, bad: amazon(root, items=bad), "items.tsv"),
        (read_microlens, lambda root, bad: microlens(root, titles=bad), "ml_titles.csv"),
        (read_microlens, lambda root, bad: microlens(root, pairs=bad), "ml_pairs.csv"),
    ],
)
def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path, read: Callable, write: Callable, name: str) -> None:
    good = {"users.tsv": USERS_TSV, "items.tsv": ITEMS_TSV, "ml_titles.csv": TITLES_CSV, "ml_pairs.csv": PAIRS_CSV}[
        name
    ].encode()
    lines = good.splitlines(keepends=True)
    write(tmp_path, lines[0] + b"caf\xe9 \xff\n" + b"".join(lines[1:]))
    assert error_of(lambda: read(tmp_path)).startswith(f"{tmp_path / name}:2: not valid UTF-8 (byte ")


@pytest.mark.parametrize(
    ("read", "write", "name", "line"),
    [
        (read_amazon, lambda root, text: amazon(root, users=text), "users.tsv", 2),
        (read_amazon, lambda root, text: amazon(root, items=text), "items.tsv", 3),
        (read_microlens, lambda root, text: microlens(root, pairs=text), "ml_pairs.csv", 6),
    ],
)
def test_a_file_cut_inside_its_last_line_is_an_error(
    tmp_path: Path, read: Callable, write: Callable, name: str, line: int
) -> None:
    good = {"users.tsv": USERS_TSV, "items.tsv": ITEMS_TSV, "ml_pairs.csv": PAIRS_CSV}[name]
    write(tmp_path, good[:-1])  # the last line lost its line end: every id in it is whole, but is it?
    assert error_of(lambda: read(tmp_path)) == (
        f"{tmp_path / name}:{line}: the file ends inside this line, without a line end: a truncated copy? "
        "(add a line end if the line is whole)"
    )


def test_a_csv_file_cut_inside_a_quoted_title_is_an_error(tmp_path: Path) -> None:
    root = microlens(tmp_path, titles=TITLES_CSV + 'P4,"Four, and\n')
    assert error_of(lambda: read_microlens(root)) == (
        f"{root / 'ml_titles.csv'}:4: not valid CSV (unexpected end of data)"
    )


@pytest.mark.parametrize(
    ("read", "write", "name", "bad", "message"),
    [
        (
            read_amazon,
            lambda root, text: amazon(root, items=text),
            "items.tsv",
            "P4\tFour\textra",
            "expected 'item<TAB>title', got 3 tab-separated field(s)",
        ),
        (
            read_amazon,
            lambda root, text: amazon(root, items=text),
            "items.tsv",
            "P4 Four",
            "expected 'item<TAB>title', got 1 tab-separated field(s)",
        ),
        (
            read_amazon,
            lambda root, text: amazon(root, users=text),
            "users.tsv",
            "U3\tP1 P2\tP3",
            "expected 'user<TAB>item item ...', got 3 tab-separated field(s)",
        ),
        (
            read_amazon,
            lambda root, text: amazon(root, users=text),
            "users.tsv",
            "\tP1 P2 P3",
            "expected 'user<TAB>item item ...', got an empty user id",
        ),
        (
            read_microlens,
            lambda root, text: microlens(root, titles=text),
            "ml_titles.csv",
            "P4",
            "expected 'item,title', got 1 field(s)",
        ),
        (
            read_microlens,
            lambda root, text: microlens(root, pairs=text),
            "ml_pairs.csv",
            "U1,P1,1,2",
            "expected 'user,item,timestamp', got 4 field(s)",
        ),
        (
            read_microlens,
            lambda root, text: microlens(root, titles=text),
            "ml_titles.csv",
            'P4,"Four"x',
            "not valid CSV (',' expected after '\"')",
        ),
    ],
)
def test_a_line_with_the_wrong_fields_names_file_and_line(
    tmp_path: Path, read: Callable, write: Callable, name: str, bad: str, message: str
) -> None:
    good = {"users.tsv": USERS_TSV, "items.tsv": ITEMS_TSV, "ml_titles.csv": TITLES_CSV, "ml_pairs.csv": PAIRS_CSV}[
        name
    ]
    write(tmp_path, good + bad + "\n")
    assert error_of(lambda: read(tmp_path)) == f"{tmp_path / name}:{good.count(chr(10)) + 1}: {message}"


def test_a_soundtrack_with_nan_samples_is_an_error_naming_the_file(tmp_path: Path) -> None:
    samples = np.array([0.1, np.nan, -0.2] * 1600, dtype="<f4").tobytes()
    header = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)  # IEEE float, mono, 16 kHz
    path = tmp_path / "i1.wav"
    path.write_bytes(
        b"RIFF"
        + struct.pack("<I", 36 + len(samples))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + header
        + b"data"
        + struct.pack("<I", len(samples))
        + samples
    )
    assert error_of(lambda: read_audio(path)) == f"{path}: 1600 audio sample(s) are NaN or infinite"


def test_the_tuner_prints_a_data_error_as_one_line(tmp_path: Path) -> None:
    from scripts import run_main

    from crossan.zoo.cli.tune import main as tune_main

    root = amazon(tmp_path / "data", items=f"item\ttitle\n{ITEMS_TSV}")
    result = run_main(
        tune_main,
        "--preset",
        "sasrec-id",
        "--data",
        "amazon",
        "--data-root",
        str(root),
        "--trials",
        "1",
        "--study",
        str(tmp_path / "study"),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 2 and not (tmp_path / "study").exists()
    assert result.stderr.splitlines() == [
        f"error: {root / 'items.tsv'}:1: a header line ('item<TAB>title'); this "
        "file has none, every line is 'item<TAB>title': delete the line"
    ]


# Arbitrary bytes: every reader returns a valid data set or raises DataError, nothing else.

TOKENS = [
    "U1",
    "U2",
    "P1",
    "P2",
    "P3",
    "P9",
    "item",
    "title",
    "user",
    "timestamp",
    "1",
    "2.5",
    "nan",
    "-inf",
    "\t",
    ",",
    " ",
    '"',
    "\r",
    "\n",
    "\x00",
    "é",
    "&amp;",
]
TEXT = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)
FUZZED = {
    "amazon items.tsv": (read_amazon, ITEMS_TSV, lambda root, raw: amazon(root, items=raw)),
    "amazon users.tsv": (read_amazon, USERS_TSV, lambda root, raw: amazon(root, users=raw)),
    "microlens titles csv": (read_microlens, TITLES_CSV, lambda root, raw: microlens(root, titles=raw)),
    "microlens pairs csv": (read_microlens, PAIRS_CSV, lambda root, raw: microlens(root, pairs=raw)),
    "microlens pairs tsv": (
        read_microlens,
        PAIRS_TSV,
        lambda root, raw: microlens(root, pairs=raw, pairs_name="ml_pairs.tsv"),
    ),
}


def contents(good: str) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, text of the layouts' tokens, and the good file with one stretch replaced
    by tokens or bytes (which keeps many cases valid, or nearly)."""
    raw = good.encode()
    edit = st.tuples(
        st.integers(0, len(raw)), st.integers(0, 8), st.one_of(TEXT.map(str.encode), st.binary(max_size=3))
    )
    return st.one_of(
        st.binary(max_size=200), TEXT.map(str.encode), edit.map(lambda e: raw[: e[0]] + e[2] + raw[e[0] + e[1] :])
    )


def assert_valid(dataset: SequenceDataset) -> None:
    """What every reader's data set holds: distinct non-empty item and user ids, one title per
    item, item indices within the catalogue, and enough interactions per user for the split."""
    assert dataset.num_items == len(set(dataset.item_ids)) and all(dataset.item_ids)
    assert dataset.titles is not None and len(dataset.titles) == dataset.num_items
    assert dataset.num_users == len(set(dataset.user_ids)) > 0 and all(dataset.user_ids)
    assert 1 <= dataset.items.min() and dataset.items.max() <= dataset.num_items
    assert (dataset.lengths >= MIN_INTERACTIONS).all()


@pytest.mark.parametrize("fuzzed", list(FUZZED))
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_every_reader_returns_a_valid_data_set_or_a_data_error(fuzzed: str, data: st.DataObject) -> None:
    read, good, write = FUZZED[fuzzed]
    raw = data.draw(contents(good), label="file content")
    with tempfile.TemporaryDirectory() as folder:
        root = write(Path(folder), raw)
        try:
            dataset = read(root)
        except DataError as error:
            assert "\n" not in str(error) and str(root) in str(error)
            return
        assert_valid(dataset)
