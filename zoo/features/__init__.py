"""Item features, in one place: what a model reads for each catalogue item.

- `settings`: `FeatureSettings`, how features are produced (backbone source, overrides, cache folder);
- `prepare`: the entry point, `prepare_features(dataset, config, settings, ...)`, which builds or
  opens whatever a model config asks for, and `open_recorded_features` for a trained run;
- `states`: the state cache (per-layer backbone states, float16, memory-mapped);
- `inputs`: stored backbone inputs (token ids, pixels) for the uncached models;
- `store`: `ItemFeatures`, the in-memory view that gathers a batch of items' inputs.

The backbones (`crossan.zoo.backbones`) compute; this package decides what to compute, stores
it and reads it back. Import from the modules (`crossan.zoo.features.store`, ...): this file
imports nothing, so the light modules stay light.
"""
