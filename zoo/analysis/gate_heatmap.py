"""The gate heatmap (paper Fig. 4): each tower's gate weights per side layer and input."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from crossan.zoo.core.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["gate_heatmap_data", "gate_heatmap_figure", "draw_gate_heatmap"]

# Panel geometry in inches: one heatmap cell, and room for tick labels, titles and the colour bar.
CELL_WIDTH, CELL_HEIGHT = 0.62, 0.42
PANEL_MARGIN, FIGURE_MARGIN, FIGURE_HEADROOM = 0.55, 1.3, 1.5


def output_labels(tower_names: Sequence[str], modalities: Sequence[str]) -> dict[str, str]:
    """Column label of every tower's previous output: the paper's uppercase initial (T, I, V, A).

    A modality tower whose initial another modality tower shares is labelled by its full name,
    and so is a tower that is no modality (IISAN's inter tower), so that a letter always names
    exactly one modality.
    """
    initials = Counter(name[:1].upper() for name in tower_names if name in modalities)
    return {
        name: name[:1].upper() if name in modalities and initials[name[:1].upper()] == 1 else name
        for name in tower_names
    }


def gate_heatmap_data(mixing: torch.Tensor, tower_names: Sequence[str], source_names: Sequence[str]) -> dict[str, Any]:
    """Per tower, the weight of every input at every side layer, from `model.gate_table()`.

    A tower's inputs are its own backbone state (`H`) and then the towers' previous outputs in
    tower order (see `output_labels`); inputs a tower never reads (zero at every layer) are left
    out. A tower without a backbone state of its own (IISAN's inter tower) lists the backbone
    states it reads as `H:<modality>`. The result holds plain lists and floats (JSON-ready).
    """
    if mixing.dim() != 3 or mixing.shape[1:] != (len(tower_names), len(source_names)):
        raise ValueError(f"mixing must be [L, {len(tower_names)}, {len(source_names)}], got {list(mixing.shape)}")
    modalities = [source.partition(":")[2] for source in source_names if source.startswith("state:")]
    labels = output_labels(tower_names, modalities)
    values_by_source = mixing.detach().float().cpu()
    towers = []
    for t, tower in enumerate(tower_names):
        own: list[tuple[int, str]] = []  # (source column, label)
        states: list[tuple[int, str]] = []
        outputs: list[tuple[int, str]] = []
        for s, source in enumerate(source_names):
            if not bool(values_by_source[:, t, s].any()):
                continue
            kind, _, name = source.partition(":")
            if kind == "state":
                (own if name == tower else states).append((s, "H" if name == tower else f"H:{name}"))
            else:
                outputs.append((s, labels[name]))
        columns, names = zip(*(own + states + outputs), strict=True)
        values = values_by_source[:, t, list(columns)]
        towers.append(
            {
                "tower": tower,
                "layers": list(range(mixing.shape[0])),
                "inputs": list(names),
                "values": [[round(float(v), 4) for v in row] for row in values],
            }
        )
    return {"towers": towers}


def gate_heatmap_figure(data: dict[str, Any], title: str | None = None) -> Figure:
    """One panel per tower in a row (rows: side layers, layer 0 at the bottom; columns: inputs),
    every cell annotated, on one shared 0-1 colour scale with one colour bar.

    Panels are as wide as their number of inputs, so cells have the same size in every panel.
    """
    # matplotlib takes a while to import; only drawing needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    towers = data["towers"]
    num_layers = max(len(tower["layers"]) for tower in towers)
    widths = [len(tower["inputs"]) for tower in towers]
    figure = Figure(
        figsize=(
            CELL_WIDTH * sum(widths) + PANEL_MARGIN * len(towers) + FIGURE_MARGIN,
            CELL_HEIGHT * num_layers + FIGURE_HEADROOM,
        ),
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(towers), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    images = []
    for axes, tower in zip(panels, towers, strict=True):
        values = tower["values"]
        image = axes.imshow(values, origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        images.append(image)
        for layer, row in enumerate(values):
            for column, value in enumerate(row):
                red, green, blue, _ = image.cmap(image.norm(value))
                light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # perceived brightness of the cell
                axes.text(
                    column,
                    layer,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if light else "white",
                )
        long_labels = max(len(label) for label in tower["inputs"]) > 2
        axes.set_xticks(
            range(len(tower["inputs"])),
            tower["inputs"],
            rotation=45 if long_labels else 0,
            ha="right" if long_labels else "center",
            rotation_mode="anchor",
        )
        axes.set_yticks(range(len(tower["layers"])), [str(layer) for layer in tower["layers"]])
        axes.set_xlabel("input")
        axes.set_title(tower["tower"])
    panels[0].set_ylabel("side layer")
    figure.colorbar(images[-1], ax=list(panels), label="gate weight", shrink=0.9, aspect=25)
    if title:
        figure.suptitle(title)
    return figure


def draw_gate_heatmap(data: dict[str, Any], path: Path, title: str | None = None) -> Path:
    """Write the heatmap of `gate_heatmap_data` as a PNG (atomically) and return its path."""
    figure = gate_heatmap_figure(data, title)
    atomic_write(Path(path), lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    return Path(path)
