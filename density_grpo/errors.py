"""One exception type for bad input: reported as one clear line, never a bare traceback."""

from __future__ import annotations

import json


class UserError(Exception):
    """Bad input data, config or environment. The message names the file/line or config key."""


def first_line(e: BaseException) -> str:
    """'Type: first line of the message' (messages of library errors can span many lines)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def describe(e: BaseException) -> str | None:
    """One line for the exception types a bad or damaged file raises; None for any other (a bug: keep its traceback).

    Stages name the file themselves where they can (UserError); this is the net for the rest.
    """
    module = type(e).__module__ or ""
    if isinstance(e, OSError) and e.filename is not None:  # PermissionError, FileNotFoundError, IsADirectoryError, ...
        return f"{e.filename}: {e.strerror or first_line(e)}"
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    if module.startswith("safetensors"):
        return f"damaged safetensors file ({first_line(e)})"
    if module.startswith("pyarrow"):
        return f"cannot read a parquet file ({first_line(e)})"
    if module.startswith(("zarr", "numcodecs")):
        return f"damaged Zarr store ({first_line(e)})"
    return None
