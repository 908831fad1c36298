"""What the reward model and GRPO share: TRL trainer arguments from a device, a training precision and a few knobs."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from transformers import TrainerCallback

from density_grpo.distributed import is_main
from density_grpo.errors import UserError


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
        ddp_find_unused_parameters=False,
        **{checkpointing_key(config_cls): gradient_checkpointing},
        **kwargs,
    )


class ConsoleProgress(TrainerCallback):
    """In place of transformers' PrinterCallback: each logged metrics dict goes to the job's log file only; the
    console gets a short progress line (monitor.Progress: step/total, the `keys` metrics, steps/s, time left)."""

    def __init__(self, keys: Sequence[str], logger: logging.Logger):
        self.keys, self.logger, self.progress = tuple(keys), logger, None

    def on_train_begin(self, args, state, control, **kwargs):
        from density_grpo.monitor import Progress

        self.progress = Progress("train", state.max_steps, "steps", logger=self.logger)

    def on_log(self, args, state, control, logs=None, **kwargs):
        from density_grpo.cli import FILE_ONLY

        if not logs:
            return
        self.logger.info("step %d metrics %s", state.global_step, logs, extra=FILE_ONLY)
        if self.progress is not None and any(k in logs for k in self.keys):  # not the end-of-training summary
            self.progress.update(state.global_step, **{k: logs.get(k) for k in self.keys})


def quiet_console(trainer, keys: Sequence[str], logger: logging.Logger) -> None:
    """Replace the trainer's printed metrics dicts (PrinterCallback, or the tqdm bar) with ConsoleProgress."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ConsoleProgress(keys, logger))


@contextmanager
def tensorboard(logdir: str | None) -> Iterator[Any]:
    """A TensorBoard SummaryWriter on the job's folder `logdir` (given by its rule with training.report_to:
    tensorboard; None: no writer), on the main process alone (None on the others).

    The folder starts empty (a rerun never appends to an earlier run's events), is written while the job trains,
    and is removed when the job fails.
    """
    if logdir is None or not is_main():
        yield None
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "config key training.report_to: tensorboard needs the tensorboard package "
            "(pip install -e '.[tensorboard]' -c constraints.txt)"
        ) from None
    shutil.rmtree(logdir, ignore_errors=True)
    writer = SummaryWriter(logdir)
    try:
        yield writer
    except BaseException:
        writer.close()
        shutil.rmtree(logdir, ignore_errors=True)
        raise
    writer.close()


def tensorboard_callbacks(writer: Any) -> list[TrainerCallback]:
    """transformers' TensorBoardCallback (what TRL's report_to="tensorboard" adds: every logged metric as
    `train/<name>`) on the job's writer; none without a writer."""
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(writer)] if writer is not None else []
