"""Run under `torchrun` by tests/test_distributed.py: one training step's loss and gradients over
the processes against one process computing the same global batch.

Every process builds the same model twice (same seed): one copy is trained data-parallel on the
process's share of each batch, the other (outside the process group) on the whole batch. The
main process prints, per case, the largest gradient difference relative to the largest gradient,
and the loss difference, as JSON.
"""

from __future__ import annotations

import copy
import json
import sys

import torch
from rich.console import Console

from crossan.zoo.core.distributed import SINGLE, launched
from crossan.zoo.data import load_dataset
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.models import build_model, preset_config
from crossan.zoo.training.trainer import TrainConfig, Trainer, epoch_batches


def main(toy_root: str, preset: str) -> None:
    dataset = load_dataset("toy", toy_root, toy_root)
    config = preset_config(preset, dropout=0.0, attention_dropout=0.0, max_seq_len=4)  # several windows per user
    generator = torch.Generator().manual_seed(0)
    features = ItemFeatures(
        dataset.num_items,
        {m: torch.randn(dataset.num_items, 4, 32, generator=generator).half() for m in config.backbone_modalities()},
    )
    results = {}
    with launched(torch.device("cpu")) as (processes, device):
        for case in ("plain", "sliding windows", "a process without windows"):
            torch.manual_seed(1)
            model = build_model(config.fit_to_data(dataset.num_items, features.shapes()))
            alone = copy.deepcopy(model)
            train = TrainConfig(batch_size=16, sliding_windows=case == "sliding windows")
            spread = Trainer(model, dataset, features, train, device, Console(quiet=True), processes)
            single = Trainer(alone, dataset, features, train, device, Console(quiet=True), SINGLE)
            mine = epoch_batches(len(spread.windows), 16, 1, 0, processes)[0]
            everyone = epoch_batches(len(single.windows), 16, 1, 0, SINGLE)[0]
            if case == "sliding windows":  # a user's consecutive windows, dealt to different processes
                everyone = torch.arange(16)
                mine = everyone[processes.rank :: processes.world_size]
            if case == "a process without windows":
                mine = mine if processes.rank == 0 else mine[:0]
                everyone = everyone[0 :: processes.world_size]  # what process 0 holds
            users = None if spread.window_users is None else spread.window_users
            loss = spread.loss(spread.windows[mine], None if users is None else users[mine])
            loss.backward()
            reference = single.loss(single.windows[everyone], None if users is None else users[everyone])
            reference.backward()
            pairs = [
                (p.grad, q.grad) for p, q in zip(model.parameters(), alone.parameters(), strict=True) if p.requires_grad
            ]
            scale = max(q.abs().max().item() for _, q in pairs)
            # The loss each process back-propagates is N x its share of the global mean.
            global_loss = processes.sum(loss.detach()).item() / processes.world_size
            results[case] = {
                "gradient": max((p - q).abs().max().item() for p, q in pairs) / scale,
                "loss": abs(global_loss - reference.item()),
                "missing_gradients": sum(p is None for p, _ in pairs),
            }
        if processes.is_main:
            print(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
