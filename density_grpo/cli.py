"""Entry point shared by the Snakemake scripts: the rule's paths and params in, one-line errors out.

A step is `step(input, output, params)`: input/output map the rule's names to paths (a str, or a list for a
named list of files), params is the rule's `params` as plain data. Steps never see `snakemake.config`: what a
rule declares in `params` is exactly what its step reads, so the params decide what reruns.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Mapping

from density_grpo.errors import UserError, describe

log = logging.getLogger("density_grpo")

Paths = Mapping[str, Any]
Step = Callable[[Paths, Paths, Mapping[str, Any]], "dict | None"]


FILE_ONLY = {"console": False}  # logging `extra=`: the record goes to the job's log file, not the console
CONSOLE_ONLY = {"file": False}  # ... to the console, not the log file


class JobStamp(logging.Filter):
    """Stamps every record with the job's name (`%(job)s`); drops FILE_ONLY records on the console, CONSOLE_ONLY
    ones in the file."""

    def __init__(self, job: str, console: bool):
        super().__init__()
        self.job, self.where = job, "console" if console else "file"

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = self.job
        return getattr(record, self.where, True)


def setup_logging(log_file: str | None = None, job: str = "-") -> None:
    """Log to stderr (short lines) and, when given, to the rule's log file (everything, with logger names); every
    line names the job (monitor.job_name), so jobs running side by side can be told apart. Python warnings and,
    in the model stages, transformers' messages go through these handlers too, so they carry the job's name."""
    import warnings

    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(job)s %(levelname)s %(message)s", "%H:%M:%S"))
    console.addFilter(JobStamp(job, console=True))
    handlers: list[logging.Handler] = [console]
    if log_file:
        to_file = logging.FileHandler(log_file, mode="w")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(job)s %(name)s %(levelname)s %(message)s"))
        to_file.addFilter(JobStamp(job, console=False))
        handlers.append(to_file)
    logging.basicConfig(level=logging.WARNING, handlers=handlers, force=True)
    logging.getLogger("density_grpo").setLevel(logging.INFO)
    warnings.showwarning = _log_warning
    if "torch" in sys.modules:  # a model stage: transformers' own stderr handler would print lines without the job
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one log line; libraries' deprecation notices (nothing a user can act on) to the log file."""
    quiet = issubclass(category, (DeprecationWarning, FutureWarning))
    where = FILE_ONLY if quiet else {}
    logging.getLogger("py.warnings").warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno, extra=where)


def named(namedlist: Any) -> dict[str, Any]:
    """The named entries of a Snakemake Namedlist (input, output, params) as a plain dict."""
    from density_grpo.io import plain

    return {str(k): plain(v) for k, v in namedlist.items()}


class RecordingParams(dict):
    """Params that remember which leaf keys were read (dotted paths), for the contract test.

    A dict subclass, so json.dumps and isinstance checks see a plain dict; iterating items()/values() counts as
    reading everything below.
    """

    def __init__(self, data: Mapping[str, Any], prefix: str = "", read: set[str] | None = None):
        self.prefix, self.read = prefix, read if read is not None else set()
        super().__init__({k: RecordingParams(v, f"{prefix}{k}.", self.read) if isinstance(v, Mapping) else v for k, v in data.items()})

    def _touch(self, key: str) -> None:
        value = dict.__getitem__(self, key)
        if isinstance(value, RecordingParams):
            value._touch_all()
        else:
            self.read.add(f"{self.prefix}{key}")

    def _touch_all(self) -> None:
        for key in dict.keys(self):
            self._touch(key)

    def __getitem__(self, key: str) -> Any:
        value = dict.__getitem__(self, key)
        if not isinstance(value, RecordingParams):
            self.read.add(f"{self.prefix}{key}")
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def items(self):
        self._touch_all()
        return dict.items(self)

    def values(self):
        self._touch_all()
        return dict.values(self)

    def leaves(self) -> set[str]:
        """Every declared leaf key, dotted."""
        out: set[str] = set()
        for key, value in dict.items(self):
            out |= value.leaves() if isinstance(value, RecordingParams) and len(value) else {f"{self.prefix}{key}"}
        return out


def run_step(smk: Any, step: Step) -> None:
    """Run `step` inside a Snakemake `script:`: bad input exits 1 with one clear line, no traceback.

    UserError is bad input the stage named; the exception types of damaged or unreadable files (JSON, parquet,
    safetensors, Zarr, permissions) get one line too (errors.describe); any other exception is a bug and keeps its
    traceback. Temporaries a killed job left beside the outputs are removed first.

    A named log (a training job's TensorBoard folder) reaches the step among its outputs: the step writes it like
    an output, but Snakemake never reruns a job for a missing log.

    When the rule declares an output named `memory`, the step runs under the memory monitor, which writes the
    measured peak there beside the prediction the step records (monitor.expect); a dict the step returns is kept
    in that record too (e.g. tokens/s).
    """
    from density_grpo.monitor import MemoryMonitor, job_name, note

    job = job_name(smk.rule, dict(smk.wildcards.items()).values())
    setup_logging(smk.log[0] if len(smk.log) else None, job)
    from density_grpo.device import set_threads
    from density_grpo.io import remove_stale_temps

    set_threads(smk.threads)
    inputs, outputs, params = named(smk.input), {**named(smk.log), **named(smk.output)}, named(smk.params)
    for tmp in remove_stale_temps(list(smk.output)):  # a job killed with SIGKILL never cleans up its atomic_path
        log.warning("removed %s, left behind by an interrupted job", tmp)
    audit = os.environ.get("DENSITY_GRPO_AUDIT_PARAMS")  # a folder: record which params each step read
    if audit:
        from density_grpo import config

        params, config.AUDIT = RecordingParams(params), set()  # plain keys, and the typed sections' fields
    try:
        if "memory" in outputs:
            warn_fraction = float(smk.resources.get("warn_fraction", 0.9))
            with MemoryMonitor(outputs["memory"], smk.rule, smk.wildcards, warn_fraction=warn_fraction):
                if "model_fingerprint" in params:  # which model content this job read, in its record
                    note(model_fingerprint=params["model_fingerprint"])
                if inputs.get("stamp"):  # the params this job is built with (rules/common.smk: params_stamp)
                    from density_grpo.io import stamp_digest

                    note(params_digest=stamp_digest(inputs["stamp"]))
                note(**(step(inputs, outputs, params) or {}))
        else:
            step(inputs, outputs, params)
        if audit:
            from density_grpo.io import write_json

            read = sorted(params.read | config.AUDIT)
            write_json({"rule": smk.rule, "declared": sorted(params.leaves()), "read": read}, f"{audit}/{job}.json")
    except UserError as e:
        log.error("%s", e)
        _point_to_log(smk)
        sys.exit(1)
    except Exception as e:
        what = describe(e, [str(f) for f in smk.input])  # a damaged or unreadable file: one line, no traceback
        if what is None:
            log.exception("rule %s failed", smk.rule)
            _point_to_log(smk)
            raise
        log.error("%s", what)
        _point_to_log(smk)
        sys.exit(1)


def _point_to_log(smk: Any) -> None:
    """The console line naming a failed job's log (the profile keeps Snakemake's own job blocks off the console)."""
    if len(smk.log):
        log.info("the whole log: %s", smk.log[0], extra=CONSOLE_ONLY)
