"""The gate heatmap and the training curves: the numbers they show and the panels they draw."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoo.analysis.curves import draw_training_curves, training_curves_figure
from zoo.analysis.gate_heatmap import draw_gate_heatmap, gate_heatmap_data, gate_heatmap_figure
from zoo.registry import create_model


def test_crossan_heatmap_has_own_state_then_every_tower_output_with_softmax_rows(tmp_path: Path) -> None:
    model = create_model("crossan-tiva")
    with torch.no_grad():  # gates away from their uniform start, so the order of inputs matters
        for parameter in model.side.parameters():
            parameter.add_(torch.randn_like(parameter))
    data = gate_heatmap_data(*model.gate_table())
    mixing, towers, sources = model.gate_table()
    assert [t["tower"] for t in data["towers"]] == ["text", "image", "video", "audio"]
    for index, tower in enumerate(data["towers"]):
        assert tower["inputs"] == ["H", "T", "I", "V", "A"]
        assert tower["layers"] == list(range(mixing.shape[0]))
        own = sources.index(f"state:{tower['tower']}")
        outputs = [sources.index(f"output:{name}") for name in towers]
        expected = mixing[:, index, [own, *outputs]]
        assert torch.tensor(tower["values"]) == pytest.approx(expected, abs=1e-4)
        assert torch.tensor(tower["values"]).sum(dim=1) == pytest.approx(torch.ones(mixing.shape[0]), abs=1e-3)

    figure = gate_heatmap_figure(data, "title")
    panels = [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]
    assert [axes.get_title() for axes in panels] == ["text", "image", "video", "audio"]
    assert len(figure.axes) == 5  # four panels and the colour bar
    assert len(panels[0].texts) == mixing.shape[0] * 5
    assert panels[0].get_ylim()[0] < panels[0].get_ylim()[1], "layer 0 is at the bottom"
    assert [label.get_text() for label in panels[0].get_xticklabels()] == ["H", "T", "I", "V", "A"]
    path = draw_gate_heatmap(data, tmp_path / "gates.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_iisan_heatmap_shows_the_sigmoid_gates_and_the_inter_tower() -> None:
    data = gate_heatmap_data(*create_model("iisan-e-tiva").gate_table())
    inputs = {t["tower"]: t["inputs"] for t in data["towers"]}
    assert inputs["text"] == ["H", "T"] and inputs["audio"] == ["H", "A"]
    assert inputs["inter"] == ["H:text", "H:image", "H:video", "H:audio", "inter"]
    text = torch.tensor(data["towers"][0]["values"])
    assert text.sum(dim=1) == pytest.approx(torch.ones(len(text)), abs=1e-4)  # g and 1 - g


def test_training_curves_mark_the_best_epoch(tmp_path: Path) -> None:
    history = [{"epoch": e, "loss": 5.0 - e, "train_seconds": 1.0, "valid": {"NDCG@10": v}}
               for e, v in zip(range(1, 6), (0.1, 0.2, 0.3, 0.25, 0.28))]
    figure = training_curves_figure(history, best_epoch=3)
    loss_axes, metric_axes = figure.axes
    assert len(loss_axes.lines[0].get_xdata()) == 5 and len(metric_axes.lines[0].get_ydata()) == 5
    legend = [text.get_text() for text in metric_axes.get_legend().get_texts()]
    assert any("best epoch 3" in text for text in legend)
    assert draw_training_curves(history, 3, tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
