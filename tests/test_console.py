"""What a job prints: TRL's metrics dicts to the job's log only, one short progress line per step on the console,
every line naming its job."""

from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import pytest

from density_grpo.cli import setup_logging
from density_grpo.monitor import Progress, job_name

# what TRL's GRPOTrainer logs per step (abridged; the real dict is 1,000-2,400 characters)
TRL_LOGS = {
    "loss": 0.0123, "grad_norm": 3.67, "learning_rate": 1e-05, "num_tokens": 2195.0, "completions/mean_length": 31.5,
    "completions/min_length": 12.0, "completions/max_length": 32.0, "completions/clipped_ratio": 0.875,
    "rewards/reward_func/mean": -0.95, "rewards/reward_func/std": 0.41, "reward": -0.95, "reward_std": 0.41,
    "frac_reward_zero_std": 0.0, "kl": 0.0042, "entropy": 2.31, "clip_ratio/low_mean": 0.0, "epoch": 0.05,
}  # fmt: skip


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    logging.basicConfig(level=logging.WARNING, handlers=[logging.NullHandler()], force=True)


def test_progress_line_is_one_short_line_with_step_metrics_rate_and_time_left():
    p = Progress("train", 6, "steps")
    line = p.line(4, 30.0, {"reward": -0.95123, "kl": None})
    assert "\n" not in line and len(line) < 120, line
    assert "train 4/6 steps" in line and "reward -0.9512" in line and "kl -" in line
    assert "0.133 steps/s" in line  # 4 steps in 30 s
    assert line.endswith("ETA 0:00:15")  # 2 steps left at 4/30 steps/s


def test_progress_logs_at_most_about_lines_times_and_always_the_last(caplog):
    p = Progress("embedded", 100, "prompts", lines=4, logger=logging.getLogger("density_grpo.test"))
    with caplog.at_level(logging.INFO, logger="density_grpo.test"):
        for done in range(1, 101):
            p.update(done)
    done = [r.getMessage().split()[1] for r in caplog.records]
    assert done == ["25/100", "50/100", "75/100", "100/100"]


def test_trl_metrics_dict_goes_to_the_log_file_only_and_the_console_gets_one_line_per_step(tmp_path, capsys):
    """transformers' trainer calls every callback's on_log with the metrics dict; its PrinterCallback would print it."""
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, PrinterCallback, TrainerControl

    from density_grpo.training import quiet_console

    job = job_name("grpo", ["uniform", "0"])
    log_file = tmp_path / f"{job}.log"
    setup_logging(str(log_file), job)
    handler = CallbackHandler([DefaultFlowCallback(), PrinterCallback()], None, None, None, None)
    trainer = SimpleNamespace(add_callback=handler.add_callback, remove_callback=handler.remove_callback)
    quiet_console(trainer, ("reward", "kl"), logging.getLogger("density_grpo.grpo"))
    assert not any(isinstance(c, PrinterCallback) for c in handler.callbacks)

    steps = 6
    state, control, args = SimpleNamespace(global_step=0, max_steps=steps, is_local_process_zero=True), TrainerControl(), None
    handler.on_train_begin(args, state, control)
    for step in range(1, steps + 1):
        state.global_step = step
        handler.on_log(args, state, control, dict(TRL_LOGS))
    handler.on_log(args, state, control, {"train_runtime": 12.0, "train_loss": 0.01, "epoch": 0.3})  # the summary

    out = capsys.readouterr()
    console = (out.err + out.out).splitlines()
    assert len(console) == steps, console
    for i, line in enumerate(console, 1):
        assert len(line) < 300 and job in line and f"train {i}/{steps} steps" in line, line
        assert "reward -0.95" in line and "kl 0.0042" in line and "steps/s" in line and "ETA" in line, line
    assert "grad_norm" not in out.err + out.out
    text = log_file.read_text()
    assert text.count("grad_norm") == steps and "train_runtime" in text  # every dict kept, in the job's log
    assert all(job in line for line in text.splitlines())


def test_every_project_log_line_names_its_job(tmp_path, capsys):
    import torch  # noqa: F401 (a model stage: transformers' messages are routed through the job's handlers)

    job = job_name("evaluate_model", ["base"])
    setup_logging(str(tmp_path / "x.log"), job)
    logging.getLogger("density_grpo.evaluate").info("1 sets x 16 prompts")
    logging.getLogger("transformers").warning("a library warning")
    warnings.warn("check your data", UserWarning)
    warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning)  # a library's: to the log file only
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(f" {job} " in line for line in err), err
    assert "UserWarning: check your data" in err[2]
    assert "FutureWarning: `is_gradient_checkpointing` is deprecated" in (tmp_path / "x.log").read_text()


def test_a_failed_job_names_its_log_on_the_console_only(tmp_path, capsys):
    from snakemake.iocontainers import Namedlist

    from density_grpo.cli import run_step
    from density_grpo.errors import UserError

    def step(input, output, params):
        raise UserError("pairs.jsonl:3: invalid JSON")

    log_file = tmp_path / "pairs.log"
    smk = SimpleNamespace(
        rule="pairs", threads=1, resources={}, input=Namedlist(), output=Namedlist(), params=Namedlist(),
        log=Namedlist(fromdict={"log": str(log_file)}), wildcards=Namedlist(),
    )  # fmt: skip
    with pytest.raises(SystemExit):
        run_step(smk, step)
    err = capsys.readouterr().err
    assert "pairs ERROR pairs.jsonl:3: invalid JSON" in err and f"the whole log: {log_file}" in err
    assert "the whole log" not in log_file.read_text()
