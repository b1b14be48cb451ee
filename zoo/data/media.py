"""Decoding of item media (cover images, video frames, soundtracks) for the feature cache.

Every reader returns plain arrays/images in a fixed, deterministic way and turns any
problem with the file (missing, unreadable, corrupt, no suitable stream) into a
`DataError` that names the file.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from crossan.zoo.data.errors import DataError

__all__ = ["read_cover", "read_video_frames", "read_audio"]


def _existing_file(path: str | Path) -> Path:
    """Return `path` as a Path, or raise DataError if it is not a regular file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a regular file", path)
    return path


def _open_container(path: Path) -> av.container.InputContainer:
    """Open a media file with PyAV, mapping decoder errors to DataError."""
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DataError(f"cannot open media file ({exc.__class__.__name__}: {exc})", path) from exc


def read_cover(path: str | Path) -> Image.Image:
    """Load a cover image as an RGB PIL image (fully decoded, file closed)."""
    path = _existing_file(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image ({exc.__class__.__name__}: {exc})", path) from exc


def _seconds_from_start(pts: int | None, stream: av.stream.Stream) -> float | None:
    """Presentation time of a packet/frame relative to the stream's start, in seconds."""
    if pts is None or stream.time_base is None:
        return None
    start = stream.start_time or 0
    return float((pts - start) * stream.time_base)


def _sample_indices(available: int, num: int) -> list[int]:
    """`num` evenly spaced indices into `available` items; repeats when there are too few."""
    return np.linspace(0, available - 1, num).round().astype(int).tolist()


def read_video_frames(path: str | Path, num_frames: int = 16, seconds: float = 3.0) -> list[np.ndarray]:
    """Sample `num_frames` RGB frames (H x W x 3, uint8) evenly from the first `seconds`.

    A first pass only demultiplexes packets to count the frames in the window, so the
    second (decoding) pass converts just the selected frames to RGB; this keeps memory
    bounded for long or high-resolution videos. Shorter videos are sampled over what
    they have, and indices repeat when there are fewer frames than `num_frames`.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    path = _existing_file(path)
    container = _open_container(path)
    try:
        if not container.streams.video:
            raise DataError("no video stream", path)
        stream = container.streams.video[0]
        available = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            t = _seconds_from_start(packet.pts, stream)
            if t is None or t < seconds:
                available += 1
    except av.FFmpegError as exc:
        raise DataError(f"corrupt video ({exc.__class__.__name__}: {exc})", path) from exc
    finally:
        container.close()
    if available == 0:
        raise DataError(f"no video frames in the first {seconds:g} s", path)
    wanted = _sample_indices(available, num_frames)
    wanted_set = set(wanted)
    picked: dict[int, np.ndarray] = {}
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            t = _seconds_from_start(frame.pts, stream)
            if index > wanted[-1] or (t is not None and t >= seconds):
                break
            if index in wanted_set:
                picked[index] = frame.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise DataError(f"corrupt video ({exc.__class__.__name__}: {exc})", path) from exc
    finally:
        container.close()
    if not picked:
        raise DataError("no decodable video frames", path)
    # If decoding yielded fewer frames than demuxing promised, fall back to the last one.
    last = picked[max(picked)]
    return [picked.get(i, last) for i in wanted]


def read_audio(path: str | Path, sampling_rate: int = 16000, seconds: float = 3.0) -> np.ndarray:
    """First `seconds` of the file's audio as a float32 mono waveform in [-1, 1].

    Audio is resampled with PyAV's `AudioResampler` to `sampling_rate` and zero-padded
    (or cut) to exactly `round(sampling_rate * seconds)` samples.
    """
    path = _existing_file(path)
    target = int(round(sampling_rate * seconds))
    container = _open_container(path)
    chunks: list[np.ndarray] = []
    have = 0
    try:
        if not container.streams.audio:
            raise DataError("no audio stream", path)
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)

        def take(frames: list[av.AudioFrame]) -> None:
            nonlocal have
            for out in frames:
                data = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                chunks.append(data)
                have += data.shape[0]

        for frame in container.decode(stream):
            take(resampler.resample(frame))
            if have >= target:
                break
        else:
            take(resampler.resample(None))
    except av.FFmpegError as exc:
        raise DataError(f"corrupt audio ({exc.__class__.__name__}: {exc})", path) from exc
    finally:
        container.close()
    wave = (np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32))[:target]
    if not np.isfinite(wave).all():  # a float soundtrack may hold NaN, which clipping keeps
        raise DataError(f"{int((~np.isfinite(wave)).sum())} audio sample(s) are NaN or infinite", path)
    wave = np.clip(wave, -1.0, 1.0)
    if wave.shape[0] < target:
        wave = np.pad(wave, (0, target - wave.shape[0]))
    return wave.astype(np.float32, copy=False)
