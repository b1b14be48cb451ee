"""Tests for the toy data generator, the media readers and DataError."""

from __future__ import annotations

import csv
import itertools
import json
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from crossan.zoo.core.errors import UserError
from crossan.zoo.data import toy
from crossan.zoo.data.errors import DataError
from crossan.zoo.data.media import read_audio, read_cover, read_video_frames
from crossan.zoo.data.toy import TOY_ATTRIBUTES, generate_toy, toy_item_attributes, toy_next_attributes

SMALL = {"num_items": 40, "num_users": 50}
TINY = {"num_items": 16, "num_users": 10}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_toy(tmp_path_factory.mktemp("toy") / "toy", seed=3, **SMALL)


def _rule(root: Path) -> dict:
    return json.loads((root / "toy_rule.json").read_text())


def _sequences(root: Path) -> dict[str, list[str]]:
    out = {}
    for line in (root / "toy_pairs.tsv").read_text().splitlines():
        user, items = line.split("\t")
        out[user] = items.split(" ")
    return out


def _titles(root: Path) -> dict[str, str]:
    with (root / "toy_title_en.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["item", "title"]
        return {row["item"]: row["title"] for row in reader}


def _nearest(value: np.ndarray, palette: list[list[int]]) -> int:
    return int(np.argmin([np.linalg.norm(value - np.asarray(c, dtype=np.float64)) for c in palette]))


def test_generation_is_deterministic(toy_root: Path, tmp_path: Path) -> None:
    again = generate_toy(tmp_path / "again", seed=3, **SMALL)
    for name in ("toy_pairs.tsv", "toy_title_en.csv", "toy_rule.json"):
        assert (again / name).read_bytes() == (toy_root / name).read_bytes()
    for item in ("i0001", "i0017", "i0040"):
        a = read_video_frames(toy_root / "videos" / f"{item}.mp4")
        b = read_video_frames(again / "videos" / f"{item}.mp4")
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert np.array_equal(
            np.asarray(read_cover(toy_root / "covers" / f"{item}.jpg")),
            np.asarray(read_cover(again / "covers" / f"{item}.jpg")),
        )
    other = generate_toy(tmp_path / "other", seed=4, **TINY)
    seed_three = generate_toy(tmp_path / "tiny", seed=3, **TINY)
    assert (other / "toy_pairs.tsv").read_bytes() != (seed_three / "toy_pairs.tsv").read_bytes()


def test_generation_is_idempotent_and_regenerates_on_new_parameters(tmp_path: Path) -> None:
    root = generate_toy(tmp_path / "toy", seed=0, **TINY)
    marker = root / ".complete"
    stamp = marker.stat().st_mtime_ns
    assert generate_toy(root, seed=0, **TINY) == root
    assert marker.stat().st_mtime_ns == stamp
    generate_toy(root, seed=1, **TINY)
    assert json.loads(marker.read_text())["seed"] == 1
    assert not list(tmp_path.glob(".toy.tmp-*"))


def test_interrupted_generation_leaves_nothing_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = toy._write_mp4

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(toy, "_write_mp4", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_toy(tmp_path / "toy", **TINY)
    assert not (tmp_path / "toy").exists()
    assert not list(tmp_path.glob(".toy.tmp-*"))
    monkeypatch.setattr(toy, "_write_mp4", real)
    assert (generate_toy(tmp_path / "toy", **TINY) / ".complete").is_file()


def test_refuses_to_replace_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="data"):
        generate_toy(tmp_path / "data", **TINY)
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"


def test_layout_and_sequences(toy_root: Path) -> None:
    titles = _titles(toy_root)
    sequences = _sequences(toy_root)
    attributes = toy_item_attributes(toy_root)
    assert sorted(titles) == sorted(attributes) == [f"i{i:04d}" for i in range(1, 41)]
    assert sorted(sequences) == [f"u{u:04d}" for u in range(1, 51)]
    for item, title in titles.items():
        assert (toy_root / "covers" / f"{item}.jpg").is_file()
        assert (toy_root / "videos" / f"{item}.mp4").is_file()
        topic_words = _rule(toy_root)["values"]["topic"][attributes[item][0]]["words"]
        assert title.split(" ")[1] in topic_words
    for items in sequences.values():
        assert 5 <= len(items) <= 15
        assert len(set(items)) == len(items)
        assert set(items) <= set(titles)
    marker = json.loads((toy_root / ".complete").read_text())
    assert marker["seed"] == 3 and marker["num_items"] == 40 and marker["num_users"] == 50


def test_planted_rule_holds_for_most_transitions(toy_root: Path) -> None:
    rule = _rule(toy_root)
    names = rule["attributes"]
    assert tuple(names) == TOY_ATTRIBUTES
    attributes = toy_item_attributes(toy_root)
    combos = set(attributes.values())

    def predict(prev: tuple[int, ...]) -> tuple[int, ...]:
        by_name = dict(zip(names, prev, strict=True))
        return tuple(
            (by_name[rule["next_from"][n]["attribute"]] + rule["next_from"][n]["offset"]) % rule["num_values"]
            for n in names
        )

    assert all(predict(c) == toy_next_attributes(c) and predict(c) in combos for c in combos)
    hits = total = 0
    for items in _sequences(toy_root).values():
        for prev, nxt in itertools.pairwise(items):
            total += 1
            hits += attributes[nxt] == predict(attributes[prev])
    # About 450 transitions: one standard deviation of the fraction is ~0.017, and random
    # draws that happen to match add ~0.01, so 0.85 +- 0.07 is a 4-sigma band.
    assert total > 300
    assert abs(hits / total - 0.85) < 0.07


def test_videos_have_duration_and_audio(toy_root: Path) -> None:
    for path in sorted((toy_root / "videos").glob("*.mp4")):
        with av.open(str(path)) as container:
            assert container.duration / av.time_base >= 3.0
            assert len(container.streams.video) == 1
            assert len(container.streams.audio) == 1


def test_read_video_frames_shape_and_pattern(toy_root: Path) -> None:
    rule = _rule(toy_root)
    palette = [v["rgb"] for v in rule["values"]["pattern"]]
    for item, attrs in toy_item_attributes(toy_root).items():
        frames = read_video_frames(toy_root / "videos" / f"{item}.mp4")
        assert len(frames) == 16
        for frame in frames:
            assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        pixels = frames[8].reshape(-1, 3).astype(np.float64)
        bright = pixels[pixels.sum(1) > pixels.sum(1).mean()]
        assert _nearest(bright.mean(0), palette) == attrs[2], item
    many = read_video_frames(toy_root / "videos" / "i0001.mp4", num_frames=40, seconds=10.0)
    assert len(many) == 40 and many[0].shape == (64, 64, 3)


def test_read_audio_pitch(toy_root: Path) -> None:
    pitches = [v["hz"] for v in _rule(toy_root)["values"]["pitch"]]
    for item, attrs in toy_item_attributes(toy_root).items():
        wave = read_audio(toy_root / "videos" / f"{item}.mp4")
        assert wave.shape == (48000,) and wave.dtype == np.float32
        assert -1.0 <= wave.min() and wave.max() <= 1.0
        spectrum = np.abs(np.fft.rfft(wave))
        peak_hz = np.argmax(spectrum) * 16000 / wave.shape[0]
        assert int(np.argmin([abs(peak_hz - p) for p in pitches])) == attrs[3], item
        assert abs(peak_hz - pitches[attrs[3]]) < 5
    padded = read_audio(toy_root / "videos" / "i0001.mp4", sampling_rate=8000, seconds=5.0)
    assert padded.shape == (40000,) and np.all(padded[-2000:] == 0)


def test_read_cover_colour(toy_root: Path) -> None:
    palette = [v["rgb"] for v in _rule(toy_root)["values"]["colour"]]
    for item, attrs in toy_item_attributes(toy_root).items():
        image = read_cover(toy_root / "covers" / f"{item}.jpg")
        assert image.mode == "RGB" and image.size == (64, 64)
        mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0)
        assert _nearest(mean, palette) == attrs[1], item


def test_data_error_format() -> None:
    assert str(DataError("bad row", "data/x.tsv", 7)) == "data/x.tsv:7: bad row"
    assert str(DataError("bad file", Path("data/x.tsv"))) == "data/x.tsv: bad file"
    assert str(DataError("plain")) == "plain"
    error = pickle.loads(pickle.dumps(DataError("bad row", "x.tsv", 3)))
    assert str(error) == "x.tsv:3: bad row" and error.line == 3
    assert isinstance(error, UserError)  # the command line prints it as one line


def test_missing_and_corrupt_media_raise_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    for reader in (read_cover, read_video_frames, read_audio):
        with pytest.raises(DataError) as info:
            reader(missing)
        assert str(missing) in str(info.value)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    for reader in (read_cover, read_video_frames, read_audio):
        with pytest.raises(DataError) as info:
            reader(junk)
        assert str(junk) in str(info.value)
    with pytest.raises(DataError, match="toy_rule.json"):
        toy_item_attributes(tmp_path)


def test_video_without_audio_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * i, dtype=np.uint8), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 8)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert len(read_video_frames(path)) == 16
    with pytest.raises(DataError, match="no audio stream") as info:
        read_audio(path)
    assert str(path) in str(info.value)
