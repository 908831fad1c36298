"""Test helper (tests/test_resume.py puts this folder on PYTHONPATH): SIGKILL a job at the worst moment.

With DENSITY_GRPO_KILL_AT=<path suffix>, the first atomic_path whose target ends with it is killed after its
temporary is fully written and before the rename publishes it: the job (DENSITY_GRPO_KILL=job) or the job and
Snakemake together (=group: the process group; the test starts Snakemake in a session of its own).
"""

import os

if os.environ.get("DENSITY_GRPO_KILL_AT"):
    import contextlib
    import signal

    import density_grpo.io as io

    _real = io.atomic_path

    @contextlib.contextmanager
    def atomic_path(path):
        with _real(path) as tmp:
            yield tmp
            if str(path).endswith(os.environ["DENSITY_GRPO_KILL_AT"]):
                if os.environ.get("DENSITY_GRPO_KILL") == "group":
                    os.killpg(0, signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)

    io.atomic_path = atomic_path
