"""The gate heatmap (paper Fig. 4): each tower's gate weights per side layer and input."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zoo.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["gate_heatmap_data", "gate_heatmap_figure", "draw_gate_heatmap"]


# The paper's letters for the modality towers' outputs; other towers (IISAN's inter tower) keep their name.
OUTPUT_LABELS = {"text": "T", "image": "I", "video": "V", "audio": "A"}


def gate_heatmap_data(mixing: torch.Tensor, tower_names: tuple[str, ...],
                      source_names: tuple[str, ...]) -> dict[str, Any]:
    """Per tower, the weight of every input at every side layer, from `model.gate_table()`.

    A tower's inputs are its own backbone state (`H`) and then the towers' previous outputs,
    labelled T, I, V, A (other towers by name); inputs a tower never reads (zero at every layer) are left out.
    Towers without a backbone state of their own (IISAN's inter tower) list every backbone
    state they read by modality.
    """
    towers = []
    for t, tower in enumerate(tower_names):
        own, states, outputs = [], [], []  # (source column, label)
        for s, source in enumerate(source_names):
            if not bool((mixing[:, t, s] != 0).any()):
                continue
            kind, _, name = source.partition(":")
            if kind == "state":
                (own if name == tower else states).append((s, "H" if name == tower else f"H:{name}"))
            else:
                outputs.append((s, OUTPUT_LABELS.get(name, name)))
        columns, names = zip(*(own + states + outputs))
        values = mixing[:, t, list(columns)].float()
        towers.append({"tower": tower, "layers": list(range(mixing.shape[0])), "inputs": list(names),
                       "values": [[round(float(v), 4) for v in row] for row in values]})
    return {"towers": towers}


def gate_heatmap_figure(data: dict[str, Any], title: str | None = None) -> Figure:
    """One panel per tower (rows: side layers, 0 at the bottom; columns: inputs), values
    annotated, on one shared 0-1 colour scale."""
    # matplotlib takes a while to import; only drawing needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    towers = data["towers"]
    width = sum(max(2.2, 0.7 * len(t["inputs"]) + 1.0) for t in towers) + 1.2
    figure = Figure(figsize=(width, 0.45 * len(towers[0]["layers"]) + 2.2), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(towers), squeeze=False)[0]
    image = None
    for axes, tower in zip(panels, towers):
        values = tower["values"]
        image = axes.imshow(values, origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        for layer, row in enumerate(values):
            for column, value in enumerate(row):
                axes.text(column, layer, f"{value:.2f}", ha="center", va="center", fontsize=8,
                          color="black" if value > 0.6 else "white")
        axes.set_xticks(range(len(tower["inputs"])), tower["inputs"])
        axes.set_yticks(range(len(tower["layers"])), [str(layer) for layer in tower["layers"]])
        axes.set_xlabel("input")
        axes.set_title(tower["tower"])
    panels[0].set_ylabel("side layer")
    figure.colorbar(image, ax=list(panels), label="gate weight", shrink=0.9)
    if title:
        figure.suptitle(title)
    return figure


def draw_gate_heatmap(data: dict[str, Any], path: Path, title: str | None = None) -> Path:
    """Write the heatmap as a PNG (atomically) and return its path."""
    figure = gate_heatmap_figure(data, title)
    atomic_write(Path(path), lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    return Path(path)
