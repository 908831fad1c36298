"""One exception type for bad input: reported as one clear line, never a bare traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence


class UserError(Exception):
    """Bad input data, config or environment. The message names the file/line or config key."""


def first_line(e: BaseException, limit: int = 240) -> str:
    """'Type: message' on one line (library messages can span many lines), at most `limit` characters of it."""
    text = " ".join(str(e).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def describe(e: BaseException, inputs: Sequence[str]) -> str | None:
    """One line for the exception types a damaged or unreadable file raises, naming the file (found among the job's
    `inputs` when the exception does not say); None for any other type: a bug, whose traceback stays.

    Stages name the file themselves where they can (UserError); this is the net for the rest.
    """
    module = type(e).__module__ or ""
    if isinstance(e, OSError) and e.filename is not None:  # PermissionError, FileNotFoundError, IsADirectoryError, ...
        return f"{e.filename}: {e.strerror or first_line(e)}"
    if isinstance(e, json.JSONDecodeError):
        what, suffix, check = f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})", ".json", _json
    elif module.startswith("safetensors"):
        what, suffix, check = f"damaged safetensors file ({first_line(e)})", ".safetensors", _safetensors
    elif module.startswith("pyarrow") or isinstance(e, OSError):  # pyarrow raises plain OSErrors for a bad footer
        what, suffix, check = f"cannot read parquet ({first_line(e)})", ".parquet", _parquet
    elif module.startswith(("zarr", "numcodecs")):
        return f"damaged Zarr store ({first_line(e)}); reading {_listing(inputs)}"
    else:
        return None
    culprit = _find_bad(inputs, suffix, check)
    if culprit is None and not module.startswith("pyarrow") and isinstance(e, OSError):
        return None  # an OSError that no input explains
    return f"{culprit}: {what}" if culprit else f"{what}; reading {_listing(inputs)}"


def _listing(files: Sequence[str]) -> str:
    return ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")


def _find_bad(inputs: Sequence[str], suffix: str, check: Callable[[str], object]) -> str | None:
    """The first input file (or file inside an input folder) with this suffix that `check` fails to read."""
    for f in inputs:
        candidates = [f] if f.endswith(suffix) else sorted(map(str, Path(f).glob(f"*{suffix}"))) if os.path.isdir(f) else []
        for c in candidates:
            try:
                check(c)
            except Exception:
                return c
    return None


def _json(path: str) -> object:
    return json.loads(Path(path).read_text())


def _parquet(path: str) -> object:
    import pyarrow.parquet as pq

    return pq.read_metadata(path)


def _safetensors(path: str) -> object:
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        return f.keys()
