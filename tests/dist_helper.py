"""Run under torch.distributed.run by tests/test_distributed.py (2 processes, gloo on CPU): OUT MODEL TESTS.

1. layout: what each rank's dataloader gets from the weighted sampler, prepared by accelerate as GRPOTrainer
   prepares it; rank 0 writes every step's slices (rank-major) and its counts to OUT/layout.json.
2. seeds: a sampler bug, every rank seeded differently (policy seed = rank), in the real trainer; each rank writes
   the one-line error it got (or "no error") to OUT/error.RANK.
"""

import json
import sys

import numpy as np
import pandas as pd

from density_grpo.distributed import world
from density_grpo.errors import UserError
from density_grpo.grpo import WeightedRepeatSampler

def layout(out: str) -> None:
    """1. The dataloader slices of each rank."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader

    acc, (rank, size) = Accelerator(cpu=True), world()
    prompts, generations, steps = 3, 4, 3
    share = prompts * generations // size  # each rank's slice of a generation (steps_per_generation 1)
    sampler = WeightedRepeatSampler(np.linspace(1, 3, 10), generations, prompts, 1, steps * prompts, seed=7)
    loader = acc.prepare(DataLoader(list(range(10)), batch_size=share, sampler=sampler))
    per_step = [gather_object([batch.tolist()]) for batch in loader]  # [rank 0's slice, rank 1's slice] per step
    if rank == 0:
        json.dump({"steps": per_step, "counts": sampler.counts.tolist()}, open(f"{out}/layout.json", "w"))


def seeds(out: str, model_dir: str) -> None:
    """2. Ranks seeded differently, in the trainer."""
    from test_grpo import QUESTIONS, tiny_params

    from density_grpo import grpo
    from density_grpo.pairs import prompt_id

    rank = world()[0]
    params = tiny_params("self_certainty") | {"policy_seed": rank}
    texts = [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS]
    prompts = pd.DataFrame({"prompt_id": [prompt_id(t) for t in texts], "text": texts})
    try:
        job = grpo.GRPOJob.from_params(params)
        grpo.train_grpo(job, model_dir, prompts, np.full(len(texts), 1 / len(texts)), None, [])
        message = "no error"
    except UserError as e:
        message = str(e)
    open(f"{out}/error.{rank}", "w").write(message)


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[3])  # tests/: test_grpo's tiny params
    layout(sys.argv[1])
    seeds(sys.argv[1], sys.argv[2])
