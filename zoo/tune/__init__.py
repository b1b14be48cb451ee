"""Recipes found by a procedure: Optuna search on the validation split, equal budgets per family.

- `space`: search spaces as data files (`spaces/*.toml`), checked field by field;
- `recipe`: the recipe file a study writes and `train.py --recipe FILE` reads;
- `study`: the study itself (TPE sampling, pruning on per-epoch validation NDCG@10, an Optuna
  RDB storage, every trial an ordinary run folder, resumable after a kill);
- `final`: after a search that validated on a sample of users, the best trials ranked again on
  the whole validation split, and the pick among them;
- `report`: the trials table, the best trial, parameter importances and the validation plot.

    crossan tune --preset crossan-t --data amazon --data-root DIR --trials 24
"""
