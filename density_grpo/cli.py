"""Entry point shared by the Snakemake scripts: logging to the rule's log, threads, one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from density_grpo.errors import UserError

log = logging.getLogger("density_grpo")


def setup_logging(log_file: str | None = None) -> None:
    """Log to stderr and, when given, to the rule's log file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    logging.getLogger("density_grpo").setLevel(logging.INFO)


def run_step(smk: Any, step: Callable[[], dict | None]) -> None:
    """Run `step` inside a Snakemake `script:`: bad input exits 1 with one clear line, no traceback.

    The step runs under the memory monitor (results/{run}/memory/{job}.json/.tsv: predicted vs measured
    peak); a dict it returns is recorded there too (e.g. tokens/s).
    """
    setup_logging(smk.log[0] if len(smk.log) else None)
    from density_grpo.device import set_threads
    from density_grpo.memory import monitor_job

    set_threads(smk.threads)
    try:
        with monitor_job(smk) as mon:
            result = step()
            if isinstance(result, dict):
                mon.extra.update(result)
    except UserError as e:
        log.error("%s", e)
        sys.exit(1)
    except Exception:
        log.exception("rule %s failed", smk.rule)
        raise
