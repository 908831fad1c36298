"""What the reward model and GRPO share: TRL trainer arguments from a device, a training precision and a few knobs."""

from __future__ import annotations

import dataclasses
from typing import Any


def checkpointing_key(config_cls) -> str:
    """transformers >= 5.x renames `gradient_checkpointing` to `activation_checkpointing` (the old name warns)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def trainer_args(config_cls, output_dir: str, device, precision: str, seed: int, gradient_checkpointing: bool, **kwargs: Any):
    """A TRL config (RewardConfig, GRPOConfig) that logs every step and saves nothing (the stage saves its model).

    precision: the planned training precision (device.plan_train_precision): the model's weights and AdamW state
    stay fp32 (master weights); bf16/fp16 only as autocast (fp16 with a grad scaler). TRL defaults bf16=True even
    on CPU, so both flags are always set.
    """
    cuda = device.type == "cuda"
    return config_cls(
        output_dir=output_dir,
        seed=seed,
        data_seed=seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        dataloader_pin_memory=cuda,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        **{checkpointing_key(config_cls): gradient_checkpointing},
        **kwargs,
    )
