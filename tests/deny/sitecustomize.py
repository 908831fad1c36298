"""Test helper (tests/test_bad_inputs.py puts this folder on PYTHONPATH): with DENSITY_GRPO_DENY_OPEN=<path>,
opening that path raises PermissionError, as for a file the user may not read (root ignores file modes)."""

import builtins
import os

if os.environ.get("DENSITY_GRPO_DENY_OPEN"):
    _real_open = builtins.open

    def _open(file, *args, **kwargs):
        if str(file) == os.environ["DENSITY_GRPO_DENY_OPEN"]:
            raise PermissionError(13, "Permission denied", str(file))
        return _real_open(file, *args, **kwargs)

    builtins.open = _open
