"""How item features are produced: backbone source, per-modality overrides, caching."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossan.zoo.backbones import TEXT_MAX_TOKENS, BackboneSpec
from crossan.zoo.core.field_types import check_field_types

__all__ = ["FeatureSettings"]


@dataclass(frozen=True)
class FeatureSettings:
    """How item features are produced: backbone source, per-modality overrides, caching."""

    source: str = "tiny"
    overrides: tuple[tuple[str, str], ...] = ()
    poolings: tuple[tuple[str, str], ...] = ()
    side_layers: int = 6
    text_max_tokens: int = TEXT_MAX_TOKENS
    cache_dir: Path = Path(".cache")
    batch_size: int = 32
    allow_missing_media: bool = False
    backbone_seed: int = 0

    def __post_init__(self) -> None:
        check_field_types(self)

    def spec(self, modality: str) -> BackboneSpec:
        return BackboneSpec.resolve(
            modality,
            self.source,
            dict(self.overrides).get(modality),
            dict(self.poolings).get(modality),
            self.backbone_seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (recorded in `config.json`, read back by `--resume`); the cache folder
        as an absolute path, so the run finds it from any working directory."""
        values = dataclasses.asdict(self)
        return {
            **values,
            "overrides": [list(p) for p in self.overrides],
            "poolings": [list(p) for p in self.poolings],
            "cache_dir": str(self.cache_dir.resolve()),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureSettings:
        return cls(
            **{
                **values,
                "overrides": tuple(map(tuple, values["overrides"])),
                "poolings": tuple(map(tuple, values["poolings"])),
                "cache_dir": Path(values["cache_dir"]),
            }
        )
