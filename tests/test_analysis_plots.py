"""The gate heatmap and the training curves: the numbers they show and the panels they draw."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crossan.zoo.analysis.curves import draw_training_curves, training_curves_figure
from crossan.zoo.analysis.gate_heatmap import draw_gate_heatmap, gate_heatmap_data, gate_heatmap_figure, output_labels
from crossan.zoo.models import create_model


def test_crossan_heatmap_has_own_state_then_every_tower_output_with_softmax_rows(tmp_path: Path) -> None:
    model = create_model("crossan-tiva")
    with torch.no_grad():  # gates away from their uniform start, so the order of inputs matters
        for parameter in model.side.parameters():
            parameter.add_(torch.randn_like(parameter))
    mixing, towers, sources = model.gate_table()
    data = gate_heatmap_data(mixing, towers, sources)
    assert [t["tower"] for t in data["towers"]] == ["text", "image", "video", "audio"]
    for index, tower in enumerate(data["towers"]):
        assert tower["inputs"] == ["H", "T", "I", "V", "A"]
        assert tower["layers"] == list(range(mixing.shape[0]))
        own = sources.index(f"state:{tower['tower']}")
        outputs = [sources.index(f"output:{name}") for name in towers]
        values = torch.tensor(tower["values"])
        assert values.shape == (mixing.shape[0], 5)
        assert values == pytest.approx(mixing[:, index, [own, *outputs]], abs=1e-4)
        # One softmax per tower and layer over [own state, every tower's previous output].
        assert values.sum(dim=1) == pytest.approx(torch.ones(mixing.shape[0]), abs=1e-3)

    figure = gate_heatmap_figure(data, "title")
    panels = [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]
    assert len(figure.axes) == 5  # four panels and the colour bar
    assert [axes.get_title() for axes in panels] == ["text", "image", "video", "audio"]
    for axes in panels:
        assert len(axes.texts) == mixing.shape[0] * 5
        assert [label.get_text() for label in axes.get_xticklabels()] == ["H", "T", "I", "V", "A"]
        assert [label.get_text() for label in axes.get_yticklabels()] == [str(i) for i in range(mixing.shape[0])]
        assert axes.get_ylim()[0] < axes.get_ylim()[1], "layer 0 is at the bottom"
    path = draw_gate_heatmap(data, tmp_path / "gates.png", title="crossan-tiva")
    assert path == tmp_path / "gates.png" and path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["gates.png"], "no temporary file is left behind"


def test_iisan_heatmap_shows_the_sigmoid_gates_and_the_inter_tower() -> None:
    mixing, towers, sources = create_model("iisan-e-tiva").gate_table()
    data = gate_heatmap_data(mixing, towers, sources)
    inputs = {t["tower"]: t["inputs"] for t in data["towers"]}
    assert inputs == {
        "text": ["H", "T"],
        "image": ["H", "I"],
        "video": ["H", "V"],
        "audio": ["H", "A"],
        "inter": ["H:text", "H:image", "H:video", "H:audio", "inter"],
    }
    for tower in data["towers"][:4]:  # intra towers: g on the state, 1 - g on the own previous output
        values = torch.tensor(tower["values"])
        assert values.sum(dim=1) == pytest.approx(torch.ones(len(values)), abs=1e-4)
    inter = torch.tensor(data["towers"][4]["values"])
    assert inter[:, :4].sum(dim=1) == pytest.approx(torch.ones(len(inter)), abs=1e-4)  # softmax over states
    assert inter[:, 4] == pytest.approx(torch.ones(len(inter)))  # its own previous output, fixed weight one
    figure = gate_heatmap_figure(data)
    assert len([axes for axes in figure.axes if axes.get_label() != "<colorbar>"]) == 5


def test_output_labels_use_initials_unless_they_would_be_ambiguous() -> None:
    assert output_labels(("text", "image"), ("text", "image")) == {"text": "T", "image": "I"}
    assert output_labels(("text", "tabular"), ("text", "tabular")) == {"text": "text", "tabular": "tabular"}
    assert output_labels(("image", "inter"), ("image",)) == {"image": "I", "inter": "inter"}
    data = gate_heatmap_data(*create_model("indsan-tiva").gate_table())
    assert [t["inputs"] for t in data["towers"]] == [["H", "T"], ["H", "I"], ["H", "V"], ["H", "A"]]


def test_training_curves_mark_the_best_epoch(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "loss": 5.0 - e, "train_seconds": 1.0, "valid": {"NDCG@10": v, "HR@10": 2 * v}}
        for e, v in zip(range(1, 6), (0.1, 0.2, 0.3, 0.25, 0.28), strict=True)
    ]
    figure = training_curves_figure(history, best_epoch=3)
    assert len(figure.axes) == 2
    loss_axes, metric_axes = figure.axes
    assert list(loss_axes.lines[0].get_ydata()) == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert list(metric_axes.lines[0].get_ydata()) == [0.1, 0.2, 0.3, 0.25, 0.28]
    marker = metric_axes.lines[-1]
    assert (list(marker.get_xdata()), list(marker.get_ydata())) == ([3], [0.3])
    legend = [text.get_text() for text in metric_axes.get_legend().get_texts()]
    assert any("best epoch 3" in text for text in legend)
    path = draw_training_curves(history, 3, tmp_path / "curves.png")
    assert path == tmp_path / "curves.png" and path.read_bytes().startswith(b"\x89PNG")
