"""Readers and bad input: every malformed file stops with one line naming file and line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from scripts import run_script

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import DataError, read_amazon, read_microlens
from crossan.zoo.data.dataset import MIN_INTERACTIONS

PROJECT = Path(__file__).resolve().parents[1]
AMAZON = PROJECT.parent / "shared" / "data" / "amazon-scientific"


@pytest.fixture
def microlens(toy_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the small toy set (media linked, text files copied)."""
    root = tmp_path / "ml"
    root.mkdir()
    for name in ("toy_pairs.tsv", "toy_title_en.csv"):
        shutil.copy(toy_root / name, root / name)
    for folder in ("covers", "videos"):
        (root / folder).mkdir()
        for file in (toy_root / folder).iterdir():
            (root / folder / file.name).symlink_to(file)
    return root


def test_reads_microlens_layout_and_split(microlens: Path) -> None:
    dataset = read_microlens(microlens)
    assert dataset.name == "toy" and dataset.modalities == ("text", "image", "video", "audio")
    first = (microlens / "toy_pairs.tsv").read_text().splitlines()[0].split("\t")[1].split()
    index = {item: i + 1 for i, item in enumerate(dataset.item_ids)}
    assert dataset.target(0, "test") == index[first[-1]] and dataset.target(0, "valid") == index[first[-2]]
    assert list(dataset.history(0, "test")) == [index[i] for i in first[:-1]]
    assert list(dataset.history(0, "train")) == [index[i] for i in first[:-2]]


def test_short_users_are_dropped_and_counted(microlens: Path) -> None:
    pairs = microlens / "toy_pairs.tsv"
    pairs.write_text(pairs.read_text() + "short\ti0001 i0002\n")
    dataset = read_microlens(microlens)
    assert dataset.dropped_users == 1 and "short" not in dataset.user_ids
    assert (dataset.lengths >= MIN_INTERACTIONS).all()


def _error(call) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_tsv_line_names_file_and_line(microlens: Path) -> None:
    pairs = microlens / "toy_pairs.tsv"
    lines = pairs.read_text().splitlines()
    lines[4] = "user-without-tab i0001 i0002 i0003"
    pairs.write_text("\n".join(lines) + "\n")
    assert _error(lambda: read_microlens(microlens)).startswith(f"{pairs}:5: expected 'user<TAB>item")


def test_unknown_item_names_file_line_and_item(microlens: Path) -> None:
    pairs = microlens / "toy_pairs.tsv"
    lines = pairs.read_text().splitlines()
    lines[2] = "u9999\ti0001 nope i0003"
    pairs.write_text("\n".join(lines) + "\n")
    assert _error(lambda: read_microlens(microlens)) == f"{pairs}:3: unknown item id 'nope' (not in the item file)"


def test_empty_title_file(microlens: Path) -> None:
    titles = microlens / "toy_title_en.csv"
    titles.write_text("")
    assert _error(lambda: read_microlens(microlens)) == f"{titles}: file is empty"


def test_non_utf8_title_file(microlens: Path) -> None:
    titles = microlens / "toy_title_en.csv"
    titles.write_bytes(titles.read_bytes() + b"i9999,caf\xe9\n")
    message = _error(lambda: read_microlens(microlens))
    assert message.startswith(f"{titles}:") and "not valid UTF-8" in message


def test_missing_cover_and_video_are_errors_unless_allowed(microlens: Path) -> None:
    from crossan.zoo.features.prepare import check_media

    (microlens / "covers" / "i0003.jpg").unlink()
    (microlens / "videos" / "i0005.mp4").unlink()
    (microlens / "videos" / "i0009.mp4").unlink()
    dataset = read_microlens(microlens)
    assert _error(lambda: check_media(dataset, "image", False)).startswith(
        f"{microlens / 'covers' / 'i0003.jpg'}: missing image file (1 of 128"
    )
    assert _error(lambda: check_media(dataset, "audio", False)).startswith(
        f"{microlens / 'videos' / 'i0005.mp4'}: missing audio file (2 of 128"
    )
    assert check_media(dataset, "video", True) == {4, 8}


def test_cli_reports_bad_input_in_one_line_without_traceback(microlens: Path, tmp_path: Path) -> None:
    (microlens / "videos" / "i0005.mp4").unlink()
    result = run_script(
        "train",
        "--preset",
        "crossan-tiva",
        "--data",
        "microlens",
        "--data-root",
        str(microlens),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {microlens / 'videos' / 'i0005.mp4'}: missing video file")
    assert "Traceback" not in result.stderr


def test_asking_for_a_modality_the_data_lacks_is_an_error() -> None:
    dataset = read_amazon(AMAZON)
    with pytest.raises(ConfigError, match="has no image content"):
        dataset.require_modalities(("text", "image"))


def test_reads_amazon_scientific() -> None:
    dataset = read_amazon(AMAZON)
    assert (dataset.num_users, dataset.num_items) == (12_076, 20_825)
    assert dataset.num_interactions == 85_211
    assert dataset.modalities == ("text",)


def test_amazon_titles_are_html_decoded(tmp_path: Path) -> None:
    (tmp_path / "items.tsv").write_text("a\tNuts &amp; Bolts 5&quot; Kit\nb\tPlain\nc\tC&#39;s\n")
    (tmp_path / "users.tsv").write_text("u1\ta b c\nu2\tb c a\n")
    assert read_amazon(tmp_path).titles == ['Nuts & Bolts 5" Kit', "Plain", "C's"]
    real = read_amazon(AMAZON)
    assert not any("&amp;" in title or "&quot;" in title for title in real.titles)
