"""Is one model better than another, and on which users: paired tests and cold-item users.

Both models rank the same users' targets, so their per-user metrics are paired samples; a
paired t-test on them is the comparison the README reports.
"""

from __future__ import annotations

import torch

from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.training.metrics import METRIC_NAMES, per_user_metric

__all__ = ["cold_item_users", "paired_t_test"]


def cold_item_users(dataset: SequenceDataset, split: str) -> torch.Tensor:
    """Bool `[num_users]`: users whose `split` target never occurs in any training prefix.

    Their target is a cold item, which an id-embedding model cannot have learned.
    """
    return torch.from_numpy(dataset.train_counts()[dataset.targets(split)] == 0)


def paired_t_test(first: torch.Tensor, second: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per metric of `METRIC_NAMES`: the mean difference (first - second) of the per-user values
    and the two-sided paired t-test p-value, from two models' target ranks `[num_users]`.

    When every user's difference is the same (identical models, say) the t statistic is 0/0 or
    ±inf, and scipy's p-value is NaN or 0 accordingly.
    """
    # scipy.stats takes seconds to import and only comparisons need it.
    from scipy.stats import ttest_rel

    results = {}
    for name in METRIC_NAMES:
        # float64: in float32 scipy's p-value underflows to 0 below about 1e-45.
        first_values = per_user_metric(first, name).double().numpy()
        second_values = per_user_metric(second, name).double().numpy()
        results[name] = {
            "mean_difference": float(first_values.mean() - second_values.mean()),
            "p_value": float(ttest_rel(first_values, second_values).pvalue),
        }
    return results
