"""A trained run over a catalogue it never trained on (zero-shot): nothing is trained on it.

A model whose item tower reads only content can embed any catalogue's items: the new
catalogue's feature cache is built with the run's own backbones (checked to be the same
weights and preprocessing), and the run's weights are loaded into a model sized for it. State
with a row per trained item (`Recommender.catalogue_state`) does not carry over: a learned
vector per item (`sasrec-id`, the ID term) stops the transfer with one line; a record of which
items occur in training starts empty, so every item of the new catalogue is a cold item, as it
is for the model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from rich.console import Console

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import DataError, SequenceDataset
from crossan.zoo.features.prepare import prepare_features
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.models import build_model, load_model
from crossan.zoo.runs.run import Run, catalogue_of_run, check_same_backbones, finished_run_config, open_run

__all__ = ["open_run_on", "open_zero_shot"]


def open_run_on(
    run_dir: str | Path,
    dataset: SequenceDataset,
    device: torch.device | str,
    console: Console,
    cache_dir: Path | None = None,
) -> Run:
    """The run in `run_dir` ranking `dataset`: the run as trained when `dataset` holds the
    catalogue it trained on, or one of those it trained on together (by fingerprint,
    `open_run`'s checks included; `catalogue_of_run`), else zero-shot (`open_zero_shot`).
    `cache_dir`: where the features are (or, zero-shot, are built)."""
    run_dir = Path(run_dir)
    config = finished_run_config(run_dir)
    fingerprint = dataset.fingerprint()
    if config["data"].get("fingerprint") == fingerprint:
        return open_run(run_dir, device, dataset.root, cache_dir, full_check=True)
    for index, catalogue in enumerate(config["data"].get("catalogues", ())):
        if catalogue["fingerprint"] == fingerprint:
            if catalogue["sequences"] != dataset.sequences_fingerprint():
                raise DataError(
                    f"the catalogue at {dataset.root} is one {run_dir} trained on, with other users' sequences "
                    f"than it trained on (hash {dataset.sequences_fingerprint()} != {catalogue['sequences']} recorded)"
                )
            return catalogue_of_run(open_run(run_dir, device, None, cache_dir, full_check=True), index)
    return open_zero_shot(run_dir, dataset, device, console, cache_dir)


def open_zero_shot(
    run_dir: str | Path,
    dataset: SequenceDataset,
    device: torch.device | str,
    console: Console,
    cache_dir: Path | None = None,
) -> Run:
    """The finished run in `run_dir` over `dataset`'s catalogue, which it never trained on: that
    catalogue's features from the run's backbones (built under `cache_dir`, default the run's
    cache folder, on first use) and the run's weights in a model sized for it."""
    run_dir = Path(run_dir)
    config = finished_run_config(run_dir)
    trained = load_model(run_dir, device=str(device))
    catalogue_state = trained.catalogue_state()
    learned = [name for name, is_learned in catalogue_state.items() if is_learned]
    if learned:
        raise ConfigError(
            f"{run_dir}: {config['preset']} learns a vector per item of the catalogue it trained on "
            f"({', '.join(learned)}), so it cannot rank another catalogue's items; a content model "
            "without the ID term can"
        )
    settings = FeatureSettings.from_dict(config["feature_settings"])
    if cache_dir is not None:
        settings = dataclasses.replace(settings, cache_dir=Path(cache_dir))
    prepared = prepare_features(dataset, trained.config, settings, torch.device(device), console)
    check_same_backbones(run_dir, config["features"]["backbones"], prepared.backbones)
    model = build_model(trained.config.fit_to_data(dataset.num_items, prepared.features.shapes()))
    kept = {name: tensor for name, tensor in trained.state_dict().items() if name not in catalogue_state}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if set(missing) != set(catalogue_state) or unexpected:
        raise RuntimeError(f"zero-shot weights do not fit: missing {missing}, unexpected {unexpected}")
    return Run(run_dir, config, model.to(device).eval(), dataset, prepared.features, zero_shot=True)
