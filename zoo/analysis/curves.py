"""Training curves: loss and validation NDCG@10 per epoch, the best epoch marked (`curves.png`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossan.zoo.core.atomic import atomic_write
from crossan.zoo.training.trainer import SELECTION_METRIC

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["training_curves_figure", "draw_training_curves"]


def training_curves_figure(history: list[dict[str, Any]], best_epoch: int, title: str | None = None) -> Figure:
    """Two panels: training loss per epoch, and the validation metric that picks the best epoch
    (NDCG@10) per epoch with that epoch marked by a star and a dashed line."""
    # matplotlib takes a while to import; only drawing needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [entry["epoch"] for entry in history]
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, metric_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [entry["loss"] for entry in history], marker="o", markersize=3)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss")
    scores = [entry["valid"][SELECTION_METRIC] for entry in history]
    metric_axes.plot(epochs, scores, marker="o", markersize=3, label=f"valid {SELECTION_METRIC}")
    if best_epoch in epochs:
        best = scores[epochs.index(best_epoch)]
        metric_axes.axvline(best_epoch, color="tab:red", linestyle="--", linewidth=1)
        metric_axes.plot(
            [best_epoch],
            [best],
            marker="*",
            markersize=12,
            color="tab:red",
            linestyle="none",
            label=f"best epoch {best_epoch} ({best:.4f})",
        )
    metric_axes.set_xlabel("epoch")
    metric_axes.set_ylabel(f"validation {SELECTION_METRIC}")
    metric_axes.legend(loc="best")
    for axes in (loss_axes, metric_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    return figure


def draw_training_curves(history: list[dict[str, Any]], best_epoch: int, path: Path, title: str | None = None) -> Path:
    """Write the curves as a PNG (atomically) and return its path."""
    figure = training_curves_figure(history, best_epoch, title)
    atomic_write(Path(path), lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    return Path(path)
