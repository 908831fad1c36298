"""Copy the HH-RLHF test splits the study trains on into data/hh-rlhf/, in the hub dataset's layout, with their checks.

The study (configs/study-cpu.yaml) reads them as an hh-rlhf mirror (`data.mirror: data/hh-rlhf`). Only the
`test` splits' bytes are reachable from this project's machines: anthropics/hh-rlhf stores its files as Git LFS
objects (its git tree holds 133-byte pointers, except harmless-base/test), and DaehanKim/EasyRLHF vendors the helpful
test splits as plain files. The study uses helpful-base/test and helpful-rejection-sampled/test; harmless-base/test
and helpful-online/test are kept for independent checks and never copied.

Each file is checked against the dataset's own LFS pointer (sha256 and size). EasyRLHF's helpful-base/test is the
LFS object byte for byte; its helpful-rejection-sampled/test was re-compressed (gzip header: default level, file name
"test.jsonl", mtime 2023-02-06), so its bytes cannot equal the pointer's: it is checked by its row count (2,749, the
split's size in the hub dataset) and by the sha256 of EasyRLHF's file, recorded in data/hh-rlhf/README.md.

  python tools/extract_hh.py --hh-rlhf <git dir of anthropics/hh-rlhf> --easyrlhf <git dir of DaehanKim/EasyRLHF>

(git dirs: clones, or bare mirrors; files are read with `git show`, so no work tree or LFS is needed.)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "data" / "hh-rlhf"
SUBSETS = ("helpful-base", "helpful-rejection-sampled")
ROWS = {"helpful-base": 2354, "helpful-rejection-sampled": 2749}  # the hub dataset's test split sizes


def git_show(git_dir: str, rev_path: str) -> bytes:
    return subprocess.run(["git", "--git-dir", git_dir, "show", rev_path], capture_output=True, check=True).stdout


def lfs_pointer(text: bytes) -> dict[str, str]:
    fields = dict(line.split(" ", 1) for line in text.decode().splitlines() if " " in line)
    return {"oid": fields["oid"].removeprefix("sha256:"), "size": fields["size"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hh-rlhf", required=True, help="git dir of anthropics/hh-rlhf (for the LFS pointers)")
    ap.add_argument("--easyrlhf", required=True, help="git dir of DaehanKim/EasyRLHF (for the bytes)")
    args = ap.parse_args()
    for subset in SUBSETS:
        pointer = lfs_pointer(git_show(args.hh_rlhf, f"HEAD:{subset}/test.jsonl.gz"))
        data = git_show(args.easyrlhf, f"HEAD:data/{subset}/test.jsonl.gz")
        sha = hashlib.sha256(data).hexdigest()
        rows = gzip.decompress(data).count(b"\n")
        verdict = "equals the LFS object" if sha == pointer["oid"] else "differs from the LFS object (re-compressed)"
        print(f"{subset}/test: {len(data):,} bytes, sha256 {sha}, {rows:,} rows; LFS oid {pointer['oid']}: {verdict}")
        if rows != ROWS[subset]:
            raise SystemExit(f"{subset}/test: {rows} rows, expected {ROWS[subset]}")
        dest = OUT / subset / "test.jsonl.gz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    (OUT / "LICENSE").write_bytes(git_show(args.hh_rlhf, "HEAD:LICENSE"))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
