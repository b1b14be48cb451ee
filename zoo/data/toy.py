"""The embedded `toy` data set: a small MicroLens-layout folder with a planted rule.

Why: the demo and the tests need real files for every modality (titles, JPEG covers, MP4
videos with a soundtrack) and a preference structure that only a model combining several
modalities can fully learn, so that cross-modal models have something to show.

Attributes. Every item has four categorical attributes with 4 values each, and each
attribute is carried by exactly one modality:

- topic   (text):  a topic word in the title, "<adjective> <topic word> <noun>"; each topic
  has a small group of words (e.g. cooking: pasta/soup), adjective and noun are fillers.
- colour  (image): the dominant colour of the cover (red, green, blue, yellow).
- pattern (video): a full-frame scrolling pattern whose orientation and colour depend on the
  value (magenta horizontal stripes, cyan vertical stripes, orange checkerboard, white
  diagonal stripes) over a dark background, visible in every frame.
- pitch   (audio): a sine tone of 250, 500, 1000 or 2000 Hz in the soundtrack.

Media depend on the attributes plus a little seeded noise (brightness, a darker patch on
the cover, pattern phase, tone amplitude and phase, filler words), so items that share
attributes look and sound alike.

Rule. Writing prev = (topic, colour, pattern, pitch) of the previous item, the next item's
attributes are predicted as::

    next.topic   = prev.colour
    next.colour  = prev.pitch
    next.pattern = prev.topic
    next.pitch   = (prev.pattern + 1) % 4

so each next attribute comes from a different modality of the previous item, and no single
modality predicts more than one of the four. The map is a bijection on the 256 attribute
combinations whose orbits all have 16 elements; the items' combinations are a union of
whole orbits (all 16 at the default size, 2 items per combination), so a matching item
always exists and a rule-following run never repeats a combination within 16 steps.

Sequences. Each user gets a length uniform in [min_seq_len, max_seq_len] and a uniformly
random first item. Each next item is, with probability `follow_prob`, drawn uniformly
from the not-yet-seen items whose attributes equal the prediction; otherwise (or when all
matching items were already seen) uniformly from all not-yet-seen items. Items never
repeat within a sequence, because evaluation masks the user's history.

Files in `root`: `toy_pairs.tsv`, `toy_title_en.csv`, `covers/<item>.jpg`,
`videos/<item>.mp4`, `toy_rule.json` (the rule and every item's attributes) and, written
last, the `.complete` marker with the generator parameters.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import secrets
import shutil
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from crossan.zoo.core.file_lock import file_lock
from crossan.zoo.data.errors import DataError

__all__ = [
    "TOY_ATTRIBUTES",
    "TOY_NUM_VALUES",
    "TOY_RULE",
    "TOY_NAME",
    "generate_toy",
    "toy_item_attributes",
    "toy_next_attributes",
]

TOY_NAME = "toy"
TOY_ATTRIBUTES: tuple[str, ...] = ("topic", "colour", "pattern", "pitch")
TOY_NUM_VALUES = 4
# attribute of the next item -> (attribute of the previous item, value offset mod 4)
TOY_RULE: dict[str, tuple[str, int]] = {
    "topic": ("colour", 0),
    "colour": ("pitch", 0),
    "pattern": ("topic", 0),
    "pitch": ("pattern", 1),
}

# Bump when the output for a given set of parameters changes, so old folders regenerate.
GENERATOR_VERSION = 1
MARKER = ".complete"

TOPIC_WORDS: tuple[tuple[str, ...], ...] = (
    ("pasta", "soup"),
    ("football", "tennis"),
    ("guitar", "piano"),
    ("puppy", "kitten"),
)
TOPIC_NAMES = ("cooking", "sport", "music", "pets")
ADJECTIVES = ("amazing", "quick", "daily", "simple")
NOUNS = ("video", "clip", "story", "moment")
COLOURS: tuple[tuple[int, int, int], ...] = ((220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 210, 40))
COLOUR_NAMES = ("red", "green", "blue", "yellow")
PATTERN_COLOURS: tuple[tuple[int, int, int], ...] = ((230, 50, 200), (50, 220, 230), (240, 140, 30), (235, 235, 235))
PATTERN_NAMES = ("magenta horizontal stripes", "cyan vertical stripes", "orange checkerboard", "white diagonal stripes")
PITCHES_HZ = (250.0, 500.0, 1000.0, 2000.0)

IMAGE_SIZE = 64
VIDEO_SIZE = 64
VIDEO_FPS = 8
MEDIA_SECONDS = 3.5
AUDIO_RATE = 16000
STRIPE = 8  # half-period of the video patterns in pixels; >= 4 survives chroma subsampling

Combo = tuple[int, int, int, int]


def toy_next_attributes(attributes: Combo) -> Combo:
    """The rule: the attributes the item after one with `attributes` should have."""
    prev = dict(zip(TOY_ATTRIBUTES, attributes, strict=True))
    return _combo((prev[src] + offset) % TOY_NUM_VALUES for src, offset in (TOY_RULE[name] for name in TOY_ATTRIBUTES))


def _combo(values: Iterable[int]) -> Combo:
    """One value per attribute (topic, colour, pattern, pitch) as a `Combo`."""
    topic, colour, pattern, pitch = (int(value) for value in values)
    return topic, colour, pattern, pitch


def toy_item_attributes(root: str | Path) -> dict[str, Combo]:
    """Map item id -> (topic, colour, pattern, pitch) as recorded in `root/toy_rule.json`."""
    path = Path(root) / f"{TOY_NAME}_rule.json"
    try:
        rule = json.loads(path.read_text())
        return {item: _combo(values) for item, values in rule["items"].items()}
    except FileNotFoundError as exc:
        raise DataError("file not found", path) from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"malformed toy rule file ({exc.__class__.__name__}: {exc})", path) from exc


def _orbits() -> list[list[Combo]]:
    """All orbits of the rule map over the 256 combinations, in a fixed order."""
    seen: set[Combo] = set()
    orbits: list[list[Combo]] = []
    for values in itertools.product(range(TOY_NUM_VALUES), repeat=len(TOY_ATTRIBUTES)):
        combo = _combo(values)
        if combo in seen:
            continue
        orbit = [combo]
        nxt = toy_next_attributes(combo)
        while nxt != combo:
            orbit.append(nxt)
            nxt = toy_next_attributes(nxt)
        seen.update(orbit)
        orbits.append(orbit)
    return orbits


def _assign_attributes(num_items: int, rng: np.random.Generator) -> list[Combo]:
    """Attributes per item: whole orbits (about 2 items per combination), shuffled over ids."""
    orbits = _orbits()
    orbit_size = len(orbits[0])
    num_orbits = min(len(orbits), max(1, num_items // (2 * orbit_size)))
    chosen = sorted(rng.permutation(len(orbits))[:num_orbits].tolist())
    combos = [combo for k in chosen for combo in orbits[k]]
    slots = rng.permutation(num_items)
    return [combos[int(s) % len(combos)] for s in slots]


def _sequences(
    attributes: list[Combo],
    num_users: int,
    min_len: int,
    max_len: int,
    follow_prob: float,
    rng: np.random.Generator,
) -> tuple[list[list[int]], int, int]:
    """Draw item-index sequences; also return (#rule-following draws, #transitions)."""
    by_combo: dict[Combo, list[int]] = {}
    for index, combo in enumerate(attributes):
        by_combo.setdefault(combo, []).append(index)
    num_items = len(attributes)
    followed = transitions = 0
    sequences: list[list[int]] = []
    for _ in range(num_users):
        length = int(rng.integers(min_len, max_len + 1))
        seq = [int(rng.integers(num_items))]
        seen = {seq[0]}
        while len(seq) < length:
            transitions += 1
            pick = None
            if rng.random() < follow_prob:
                matches = [i for i in by_combo.get(toy_next_attributes(attributes[seq[-1]]), []) if i not in seen]
                if matches:
                    pick = matches[int(rng.integers(len(matches)))]
                    followed += 1
            if pick is None:
                pool = [i for i in range(num_items) if i not in seen]
                pick = pool[int(rng.integers(len(pool)))]
            seq.append(pick)
            seen.add(pick)
        sequences.append(seq)
    return sequences, followed, transitions


def _title(combo: Combo, rng: np.random.Generator) -> str:
    """'<adjective> <topic word> <noun>' with the topic word from the topic's group."""
    words = TOPIC_WORDS[combo[0]]
    adjective, topic = ADJECTIVES[rng.integers(len(ADJECTIVES))], words[rng.integers(len(words))]
    return f"{adjective} {topic} {NOUNS[rng.integers(len(NOUNS))]}"


def _cover(combo: Combo, rng: np.random.Generator) -> np.ndarray:
    """A cover filled with the colour value, a darker patch and mild pixel noise."""
    base = np.array(COLOURS[combo[1]], dtype=np.float32) * rng.uniform(0.88, 1.08)
    image = np.broadcast_to(base, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    size = int(rng.integers(10, 20))
    y, x = (int(v) for v in rng.integers(0, IMAGE_SIZE - size, size=2))
    image[y : y + size, x : x + size] *= 0.6
    image += rng.normal(0.0, 5.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _video(combo: Combo, rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Frames [T, H, W, 3] of the pattern value, scrolling one pixel per frame."""
    pattern = combo[2]
    colour = np.array(PATTERN_COLOURS[pattern], dtype=np.float32) * rng.uniform(0.88, 1.04)
    background = np.full(3, rng.uniform(20.0, 50.0), dtype=np.float32)
    phase = int(rng.integers(2 * STRIPE))
    yy, xx = np.mgrid[0:VIDEO_SIZE, 0:VIDEO_SIZE]
    frames = np.empty((num_frames, VIDEO_SIZE, VIDEO_SIZE, 3), dtype=np.uint8)
    for t in range(num_frames):
        shift = phase + t
        if pattern == 0:
            on = ((yy + shift) // STRIPE) % 2 == 0
        elif pattern == 1:
            on = ((xx + shift) // STRIPE) % 2 == 0
        elif pattern == 2:
            on = (((yy + shift) // STRIPE) + (xx // STRIPE)) % 2 == 0
        else:
            on = ((xx + yy + shift) // STRIPE) % 2 == 0
        frames[t] = np.where(on[..., None], colour, background).astype(np.uint8)
    return frames


def _audio(combo: Combo, rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """A sine tone at the pitch value with a weak octave and a little noise."""
    t = np.arange(num_samples, dtype=np.float64) / AUDIO_RATE
    freq = PITCHES_HZ[combo[3]]
    amplitude = rng.uniform(0.3, 0.5)
    phase = rng.uniform(0.0, 2 * np.pi)
    wave = amplitude * np.sin(2 * np.pi * freq * t + phase) + 0.05 * np.sin(4 * np.pi * freq * t)
    wave += rng.normal(0.0, 0.005, size=num_samples)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _video_codec() -> str:
    """H.264 when the local FFmpeg can encode it, else MPEG-4 part 2."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray) -> None:
    """Encode frames and a mono soundtrack (AAC) into one MP4 file."""
    with av.open(str(path), mode="w", format="mp4") as container:
        codec = _video_codec()
        vstream = container.add_stream(codec, rate=VIDEO_FPS)
        astream = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        if not isinstance(vstream, av.VideoStream) or not isinstance(astream, av.AudioStream):
            raise RuntimeError(
                f"PyAV made a {type(vstream).__name__} for {codec} and a {type(astream).__name__} for aac"
            )
        vstream.width = frames.shape[2]
        vstream.height = frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        if codec == "libx264":
            vstream.options = {"preset": "veryfast", "crf": "18", "threads": "1"}
        else:
            vstream.bit_rate = 400_000
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = index
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        chunk = 1024
        for start in range(0, audio.shape[0], chunk):
            piece = audio[None, start : start + chunk]
            audio_frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout="mono")
            audio_frame.sample_rate = AUDIO_RATE
            audio_frame.pts = start
            audio_frame.time_base = Fraction(1, AUDIO_RATE)
            container.mux(astream.encode(audio_frame))
        container.mux(astream.encode(None))


def _id(prefix: str, index: int, count: int) -> str:
    """Zero-padded string id, e.g. 'i0001', starting at 1."""
    return f"{prefix}{index + 1:0{max(4, len(str(count)))}d}"


def _write_dataset(
    out: Path,
    *,
    seed: int,
    num_users: int,
    num_items: int,
    min_seq_len: int,
    max_seq_len: int,
    follow_prob: float,
) -> None:
    """Write every file of the data set into the empty folder `out` (marker excluded)."""
    structure_rng = np.random.default_rng([seed, 0])
    attributes = _assign_attributes(num_items, structure_rng)
    item_ids = [_id("i", i, num_items) for i in range(num_items)]
    user_ids = [_id("u", u, num_users) for u in range(num_users)]
    sequences, followed, transitions = _sequences(
        attributes, num_users, min_seq_len, max_seq_len, follow_prob, np.random.default_rng([seed, 1])
    )

    (out / "covers").mkdir()
    (out / "videos").mkdir()
    num_frames = int(round(MEDIA_SECONDS * VIDEO_FPS))
    num_samples = int(round(MEDIA_SECONDS * AUDIO_RATE))
    titles: list[str] = []
    for index, (item, combo) in enumerate(zip(item_ids, attributes, strict=True)):
        rng = np.random.default_rng([seed, 2, index])
        titles.append(_title(combo, rng))
        Image.fromarray(_cover(combo, rng)).save(out / "covers" / f"{item}.jpg", format="JPEG", quality=90)
        _write_mp4(out / "videos" / f"{item}.mp4", _video(combo, rng, num_frames), _audio(combo, rng, num_samples))

    with (out / f"{TOY_NAME}_pairs.tsv").open("w", encoding="utf-8", newline="\n") as f:
        for user, seq in zip(user_ids, sequences, strict=True):
            f.write(f"{user}\t{' '.join(item_ids[i] for i in seq)}\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["item", "title"])
    writer.writerows(zip(item_ids, titles, strict=True))
    (out / f"{TOY_NAME}_title_en.csv").write_text(buffer.getvalue(), encoding="utf-8")

    rule = {
        "attributes": list(TOY_ATTRIBUTES),
        "modalities": {"topic": "text", "colour": "image", "pattern": "video", "pitch": "audio"},
        "values": {
            "topic": [{"name": n, "words": list(w)} for n, w in zip(TOPIC_NAMES, TOPIC_WORDS, strict=True)],
            "colour": [{"name": n, "rgb": list(c)} for n, c in zip(COLOUR_NAMES, COLOURS, strict=True)],
            "pattern": [{"name": n, "rgb": list(c)} for n, c in zip(PATTERN_NAMES, PATTERN_COLOURS, strict=True)],
            "pitch": [{"hz": hz} for hz in PITCHES_HZ],
        },
        "next_from": {name: {"attribute": src, "offset": off} for name, (src, off) in TOY_RULE.items()},
        "num_values": TOY_NUM_VALUES,
        "follow_prob": follow_prob,
        "observed": {"transitions": transitions, "rule_draws": followed},
        "items": {item: list(combo) for item, combo in zip(item_ids, attributes, strict=True)},
    }
    (out / f"{TOY_NAME}_rule.json").write_text(json.dumps(rule, indent=1) + "\n", encoding="utf-8")


def _read_marker(root: Path) -> dict | None:
    """The parameters recorded in `root/.complete`, or None if absent or unreadable."""
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def generate_toy(
    root: str | Path,
    *,
    seed: int = 0,
    num_users: int = 2000,
    num_items: int = 512,
    min_seq_len: int = 5,
    max_seq_len: int = 15,
    follow_prob: float = 0.85,
) -> Path:
    """Write the toy data set into `root` (see the module docstring) and return `root`.

    Idempotent: returns at once when `root/.complete` records the same parameters.
    Otherwise it builds the data set in a temporary sibling folder, writes the marker
    last, and renames the folder into place, so an interrupted run never leaves a
    folder that looks complete. An existing `root` without a marker must be empty.
    """
    if num_items < 16:
        raise ValueError(f"num_items must be >= 16 (one full rule orbit), got {num_items}")
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    if not 2 <= min_seq_len <= max_seq_len <= num_items:
        raise ValueError(f"need 2 <= min_seq_len <= max_seq_len <= num_items, got {min_seq_len}, {max_seq_len}")
    if not 0.0 <= follow_prob <= 1.0:
        raise ValueError(f"follow_prob must be in [0, 1], got {follow_prob}")
    root = Path(root)
    params = {
        "generator": "crossan.zoo.data.toy",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_users": num_users,
        "num_items": num_items,
        "min_seq_len": min_seq_len,
        "max_seq_len": max_seq_len,
        "follow_prob": follow_prob,
    }
    if _read_marker(root) == params:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / f".{root.name}.lock"):
        if _read_marker(root) == params:
            return root
        if root.exists() and _read_marker(root) is None and (not root.is_dir() or any(root.iterdir())):
            raise DataError("exists and is not a generated toy data set; refusing to replace it", root)
        for stale in root.parent.glob(f".{root.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            _write_dataset(
                tmp,
                seed=seed,
                num_users=num_users,
                num_items=num_items,
                min_seq_len=min_seq_len,
                max_seq_len=max_seq_len,
                follow_prob=follow_prob,
            )
            (tmp / MARKER).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
            if root.exists():
                old = root.parent / f".{root.name}.tmp-old-{os.getpid()}-{secrets.token_hex(4)}"
                os.replace(root, old)
                os.replace(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root
