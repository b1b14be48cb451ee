"""Loss, metrics, evaluation and the training loop."""

from crossan.zoo.training.evaluation import EvaluationResult, evaluate_model, evaluate_popularity
from crossan.zoo.training.loss import in_batch_debiased_cross_entropy, same_user_mask
from crossan.zoo.training.metrics import METRIC_NAMES, metrics_from_ranks, per_user_metric, target_ranks
from crossan.zoo.training.significance import cold_item_users, paired_t_test
from crossan.zoo.training.trainer import TrainConfig, Trainer, TrainingOutcome

__all__ = [
    "EvaluationResult",
    "TrainConfig",
    "Trainer",
    "TrainingOutcome",
    "evaluate_model",
    "evaluate_popularity",
    "in_batch_debiased_cross_entropy",
    "metrics_from_ranks",
    "per_user_metric",
    "same_user_mask",
    "target_ranks",
    "METRIC_NAMES",
    "cold_item_users",
    "paired_t_test",
]
