"""Atomic writes (outputs appear complete or not at all: write to a temp path, then rename) and provenance."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from density_grpo.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (file or directory); rename it onto `path` on success.

    On any exception the temporary is removed and `path` is left untouched.
    A full disk, a quota or a results folder the job may not write raises UserError naming `path` (the library
    that writes often names no file, or only the temporary).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        try:
            yield tmp
            _remove(path)
            os.replace(tmp, path)
        finally:
            _remove(tmp)
    except Exception as e:
        reason = _write_error(e, path)
        if reason is None:
            raise
        raise UserError(f"{path}: cannot write ({reason})") from None


def _write_error(e: BaseException, path: Path) -> str | None:
    """Why writing `path` failed, when `e` is an error of writing (not of reading an input); else None.

    torch and safetensors wrap a full disk in their own exception types, with the OS message in the text.
    """
    if not isinstance(e, OSError):
        return "No space left on device" if "No space left on device" in str(e) else None
    # the temporary or a folder above the output (mkdir), not some input the body read
    ours = e.filename is None or str(e.filename).startswith(str(path.parent)) or str(path).startswith(str(e.filename))
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) or (e.errno in (errno.EACCES, errno.EPERM) and ours):
        return e.strerror or os.strerror(e.errno)
    return None


def remove_stale_temps(paths: list[str | os.PathLike]) -> list[Path]:
    """Remove the temporaries atomic_path left beside `paths` when a job was killed (SIGKILL runs no cleanup).

    Called at job start: Snakemake runs one job per output at a time, so any such sibling is stale.
    """
    removed = []
    for path in map(Path, paths):
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*") if path.parent.is_dir() else []:
            _remove(tmp)
            removed.append(tmp)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` as pretty, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(rows: list[dict], path: str | os.PathLike) -> None:
    """One JSON object per line, atomically (numpy scalars written as floats)."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row, default=float) + "\n" for row in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, row_group_size: int | None = None) -> None:
    """Write a DataFrame to parquet (no index), atomically; `row_group_size` rows per row group (read_parquet_rows
    then decompresses only the groups of the rows asked for)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, row_group_size=row_group_size)


def read_parquet_rows(path: str | os.PathLike, start: int, stop: int, columns: list[str]) -> pd.DataFrame:
    """Rows start..stop of a parquet file, reading only the row groups that hold them (memory: those groups, whose
    size in Arrow is the frame's attrs["bytes_read"])."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    groups, first, offset = [], 0, 0
    for g in range(f.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            first = first if groups else offset
            groups.append(g)
        offset += n
    table = f.read_row_groups(groups, columns=columns) if groups else f.schema_arrow.empty_table().select(columns)
    df = table.slice(start - first, max(stop - start, 0)).to_pandas()
    df.attrs["bytes_read"] = table.nbytes
    return df


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def plain(x: Any) -> Any:
    """Snakemake's Namedlist/params values and other mappings/sequences -> plain dict, list, str and scalars
    (dict.items: copying a recorded mapping is not reading it)."""
    if isinstance(x, str):
        return str(x)
    if isinstance(x, Mapping):
        return {str(k): plain(v) for k, v in dict.items(x)} if isinstance(x, dict) else {str(k): plain(v) for k, v in x.items()}
    return [plain(v) for v in x] if isinstance(x, (list, tuple)) else x


def provenance(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params a stage read, package versions and the git commit: enough to reproduce an artifact."""
    pkgs = {}
    for name in ("density-grpo", "torch", "transformers", "trl", "faiss-cpu", "zarr", "numpy", "pandas", "snakemake"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    return {
        "params": json.loads(json.dumps(plain(params), default=str)),
        "packages": pkgs,
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The repo's HEAD commit (with '-dirty' if there are local changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# -----------------------------------------------------------------------------
# params stamps: provenance that does not depend on Snakemake's .snakemake/ metadata


def params_digest(params: Mapping[str, Any]) -> str:
    """sha256 of the params' canonical JSON (sorted keys): equal params, equal digest."""
    body = json.dumps(plain(params), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def stamp_digest(path: str | os.PathLike) -> str | None:
    """The digest a params stamp holds, or None if there is no readable stamp."""
    try:
        return json.loads(Path(path).read_text())["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def built_digest(record: str | os.PathLike) -> str | None:
    """The params digest a finished job wrote in its memory record (monitor.note(params_digest=...)); "" when the
    record exists without one (made before params stamps, or unreadable), None when there is no record."""
    try:
        rec = json.loads(Path(record).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return ""
    return ((rec.get("extra") or {}) if isinstance(rec, dict) else {}).get("params_digest") or ""


def refresh_stamp(stamp: str | os.PathLike, params: Mapping[str, Any], record: str | os.PathLike) -> str:
    """Bring the params stamp of a job up to date with `params`, its params now; say how the job stands.

    The stamp (JSON: digest and params, for a person to diff) is an input of the job, so Snakemake's mtime rule,
    which needs no metadata, reruns the job and its dependants when the stamp is newer than the outputs. Returns
    "built" when the job's record says it was built with these params (the stamp must not outdate it: the caller
    marks it ancient), "stale" when it was built with others or not yet (the stamp is then newer than the record),
    "unknown" when the record holds no digest.
    """
    stamp, digest = Path(stamp), params_digest(params)
    built = built_digest(record)
    if built == "":
        return "unknown"
    if stamp_digest(stamp) != digest:
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps({"digest": digest, "params": plain(params)}, indent=1, sort_keys=True, default=str) + "\n")
    if built == digest:
        return "built"
    if built is not None and stamp.stat().st_mtime_ns <= Path(record).stat().st_mtime_ns:
        os.utime(stamp)  # e.g. params changed back and forth since the record: the job must rerun
    return "stale"
