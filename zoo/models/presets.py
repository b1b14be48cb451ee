"""Named presets: data only. Each maps to an architecture and the config fields it sets;
unset fields keep the config defaults (the paper's setting: 768-wide backbones, 7 states)."""
from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

_TIVA = ("text", "image", "video", "audio")

PRESETS: dict[str, dict[str, Any]] = {
    "crossan-tiva": {"architecture": "crossan", "modalities": _TIVA, "top_k": 2},
    "crossan-tiva-concat": {"architecture": "crossan", "modalities": _TIVA, "fusion": "concat"},
    "crossan-tiva-sgated": {"architecture": "crossan", "modalities": _TIVA, "fusion": "static-gated"},
    "crossan-tiva-dgated": {"architecture": "crossan", "modalities": _TIVA, "fusion": "dynamic-gated"},
    "crossan-tia": {"architecture": "crossan", "modalities": ("text", "image", "audio"), "top_k": 2},
    "crossan-tiv": {"architecture": "crossan", "modalities": ("text", "image", "video"), "top_k": 2},
    "crossan-ti": {"architecture": "crossan", "modalities": ("text", "image"), "top_k": 2},
    "crossan-t": {"architecture": "crossan", "modalities": ("text",), "top_k": 1},
    "indsan-tiva": {"architecture": "crossan", "modalities": _TIVA, "cross_modal": False, "top_k": 2},
    "indsan-ti": {"architecture": "crossan", "modalities": ("text", "image"), "cross_modal": False, "top_k": 2},
    "iisan-ti": {"architecture": "iisan", "modalities": ("text", "image")},
    "iisan-e-tiva": {"architecture": "iisan", "modalities": _TIVA, "adapter_dim": 1024},
    "sasrec-id": {"architecture": "sasrec-id"},
}
