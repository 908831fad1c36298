"""Stages 1-2: preference pairs in the Anthropic HH-RLHF format, and the unique prompts derived from them.

An HH pair is two full dialogues, "\\n\\nHuman: ...\\n\\nAssistant: ...", that share every turn but the last
Assistant reply. We split them TRL-style into an explicit prompt (the dialogue up to and including the last
"\\n\\nAssistant:") and two responses (the rest, verbatim, so prompt + response == the original dialogue).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from density_grpo.config import DataConfig
from density_grpo.errors import UserError
from density_grpo.io import write_json, write_parquet

log = logging.getLogger(__name__)

ASSISTANT_TAG = "\n\nAssistant:"
HUMAN_TAG = "\n\nHuman:"
PROMPT_ROW_GROUP = 128  # rows per row group of prompts.parquet: an embed chunk reads only the groups of its rows

HH_REPO = "Anthropic/hh-rlhf"
SAMPLE_PATH = Path(__file__).parent / "data" / "sample_pairs.jsonl"
MAX_PAIRS_SEED = 0  # salt of the data.max_pairs sample: fixed, so the config seed never changes the data
PAIR_COLUMNS = ["pair_id", "prompt", "chosen", "rejected", "source", "subset", "topic"]
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
GZIP_MAGIC = b"\x1f\x8b"

log = logging.getLogger(__name__)


# -----------------------------------------------------------------------------
# dialogues and hashes


def split_dialogue(text: str) -> tuple[str, str]:
    """HH dialogue -> (prompt up to and including the last Assistant tag, response).

    The response is kept verbatim (its leading space included): prompt + response == text, and for BPE
    tokenizers the space belongs to the response's first word.
    """
    i = text.rfind(ASSISTANT_TAG)
    if i < 0:
        raise ValueError(f"no {ASSISTANT_TAG!r} tag")
    cut = i + len(ASSISTANT_TAG)
    return text[:cut], text[cut:]


def pair_from_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """HH (chosen, rejected) dialogues -> (prompt, chosen_response, rejected_response).

    The prompt is the part both dialogues share, up to and including its last Assistant tag: usually the chosen
    dialogue up to its last Assistant tag, but a few real HH pairs (3 of 5,103 in helpful-base/test and
    helpful-rejection-sampled/test) diverge at an earlier Assistant reply, after which the chosen text runs on
    with more turns; the preference compares the two continuations of the shared part.
    """
    if ASSISTANT_TAG not in chosen:
        raise ValueError(f"'chosen' has no {ASSISTANT_TAG!r} tag")
    if ASSISTANT_TAG not in rejected:
        raise ValueError(f"'rejected' has no {ASSISTANT_TAG!r} tag")
    prompt = split_dialogue(chosen)[0]
    if not rejected.startswith(prompt):
        at = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
        shared = chosen[:at].rfind(ASSISTANT_TAG)
        if shared < 0:
            raise ValueError(
                f"'chosen' and 'rejected' have different prompts (they differ at character {at}; a pair must share "
                "every turn up to an Assistant reply)"
            )
        prompt = chosen[: shared + len(ASSISTANT_TAG)]
    request = prompt[: -len(ASSISTANT_TAG)]
    if HUMAN_TAG not in request:
        raise ValueError(f"no {HUMAN_TAG!r} turn before the last Assistant reply")
    if not request[request.rfind(HUMAN_TAG) + len(HUMAN_TAG) :].strip():
        raise ValueError("empty Human turn before the last Assistant reply (nothing to embed or answer)")
    return prompt, chosen[len(prompt) :], rejected[len(prompt) :]


def prompt_id(text: str) -> str:
    """Stable content id: the first 16 hex digits of sha256(text) (fits a uint64)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def texts_hash(texts: Iterable[str]) -> str:
    """sha256 hex of a sequence of texts; order matters (hash of the concatenated per-text digests)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8")).digest())
    return h.hexdigest()


# -----------------------------------------------------------------------------
# reading files


def _stem(path: Path) -> str:
    """File name without .jsonl/.jsonl.gz/.parquet."""
    name = path.name
    for ext in (".jsonl.gz", ".jsonl", ".parquet"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (where, parsed object) for each non-blank line; where = 'file:line'."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        f = opener(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        with f:
            for n, raw in enumerate(f, start=1):
                where = f"{path}:{n}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{where}: not valid UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
                except ValueError as e:  # a number past Python's int conversion limit
                    raise UserError(f"{where}: JSON that Python's parser refuses ({e})") from None
                except RecursionError:
                    raise UserError(f"{where}: JSON nested too deeply for Python's parser") from None
                yield where, row
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # corrupt or truncated .gz
        raise UserError(f"{path}: not a valid gzip file ({e})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (where, row dict) for each row; where = 'file row N' (1-based)."""
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot read parquet ({first})") from None
    for n, row in enumerate(df.to_dict("records"), start=1):
        yield f"{path} row {n}", row


def _parse_row(row: Any, where: str) -> dict[str, str]:
    """One input record (HH strings or explicit prompt/chosen/rejected) -> prompt/chosen/rejected/topic/subset."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    explicit = "prompt" in row
    keys = ("prompt", "chosen", "rejected") if explicit else ("chosen", "rejected")
    for k in keys:
        if k not in row:
            raise UserError(
                f"{where}: missing key {k!r} (expected HH 'chosen'/'rejected' dialogues, or 'prompt', 'chosen', "
                "'rejected')"
            )
        if not isinstance(row[k], str):
            got = "null" if row[k] is None else type(row[k]).__name__
            raise UserError(f"{where}: {k!r} must be a string, got {got}")
        _check_unicode(row[k], k, where)
    if explicit:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        # an empty prompt has nothing to embed or to train on: almost surely a broken export
        if not prompt.strip():
            raise UserError(f"{where}: empty 'prompt'")
    else:
        try:
            prompt, chosen, rejected = pair_from_hh(row["chosen"], row["rejected"])
        except ValueError as e:
            raise UserError(f"{where}: {e}") from None
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for k in ("topic", "subset"):  # optional metadata, kept as strings ("" when null)
        if k in row:
            v = row[k]
            out[k] = "" if v is None or (isinstance(v, float) and v != v) else str(v)
            _check_unicode(out[k], k, where)
    return out


def _check_unicode(text: str, key: str, where: str) -> None:
    """JSON may escape lone surrogates ("\\ud800"), which no UTF-8 file (parquet, the tokenizer) can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{where}: {key!r} holds a lone surrogate {text[e.start]!r} at character {e.start} (not valid Unicode)") from None


def _sniff(path: Path) -> None:
    """Name the wrong files that look like data: a Git LFS pointer (a clone without LFS) and gzip bytes under a
    name without .gz (both would read as invalid JSON or UTF-8)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if head == LFS_POINTER:
        raise UserError(f"{path}: this is a Git LFS pointer, fetch the real file with git lfs pull")
    if head.startswith(GZIP_MAGIC) and not path.name.lower().endswith(".gz"):
        raise UserError(f"{path}: gzip-compressed data under a name without .gz (rename it to {path.name}.gz)")


def read_local(path: str | os.PathLike) -> pd.DataFrame:
    """Read pairs from a .jsonl, .jsonl.gz or .parquet file -> prompt, chosen, rejected [, topic, subset].

    Rows are HH dialogues {"chosen", "rejected"} or explicit {"prompt", "chosen", "rejected"} (responses only).
    Blank jsonl lines are skipped. Any bad row raises a one-line UserError naming file:line (parquet: row N, 1-based).
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a .jsonl, .jsonl.gz or .parquet file")
    if name.endswith((".jsonl", ".jsonl.gz")):
        reader = _jsonl_rows
    elif name.endswith(".parquet"):
        reader = _parquet_rows
    else:
        raise UserError(f"{path}: unsupported file type (expected .jsonl, .jsonl.gz or .parquet)")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    _sniff(path)
    rows = [_parse_row(row, where) for where, row in reader(path)]
    if not rows:
        raise UserError(f"{path}: no pairs (empty file)")
    df = pd.DataFrame(rows)
    for k in ("topic", "subset"):  # a key present in some rows only
        if k in df.columns:
            df[k] = df[k].fillna("")
    return df


# -----------------------------------------------------------------------------
# sources


def load_hh_rlhf(subsets: list[str], files: list[str]) -> pd.DataFrame:
    """Anthropic HH-RLHF files (a mirror's copies or the hub's downloads), one per subset in `subsets` order."""
    frames = []
    for subset, path in zip(subsets, files, strict=True):
        df = read_local(path)
        df["subset"] = subset
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _hub_download(filename: str) -> Path:
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    catch: tuple[type[BaseException], ...] = (OSError, hf_errors.HfHubHTTPError)  # requests' errors are OSErrors
    for mod in ("httpx", "httpx2"):  # the HTTP client of huggingface_hub >= 1.0
        try:
            catch += (importlib.import_module(mod).HTTPError,)
        except ImportError:
            pass
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id=HH_REPO, repo_type="dataset", filename=filename))
    except catch as e:
        raise UserError(
            f"cannot download {filename} from the Hugging Face hub dataset {HH_REPO} (hub unreachable or offline: "
            f"{type(e).__name__}); set data.mirror to a local copy of the dataset or use data.source: local"
        ) from None


def load_pairs(data: DataConfig, files: list[str]) -> pd.DataFrame:
    """Pairs of one source -> columns PAIR_COLUMNS, in that order; `data.max_pairs` of them kept (None: all).

    max_pairs keeps the pairs with the smallest seeded hash of their pair_id (a sample without replacement in which
    every pair of every selected subset is equally likely, so each subset keeps about its share; the same pairs on
    every machine and whatever the config seed), in file order. Taking the first N of the concatenated subsets
    would leave a later subset with nothing.

    files: the sample file, the local file, or one hh-rlhf file per subset (a mirror's, or downloaded).
    pair_id = "{source}:{name}:{row}", name = file stem (sample, local) or "<subset>/<split>" (hh-rlhf), row = the
    0-based row in that file: unique, and stable when a file is appended to. Pairs with identical responses are kept.
    """
    source, max_pairs = data.source, data.max_pairs
    if source in ("sample", "local"):
        path = Path(files[0])
        df = read_local(path)
        if "subset" not in df.columns:
            df["subset"] = _stem(path)
        df["pair_id"] = [f"{source}:{_stem(path)}:{i}" for i in range(len(df))]
    else:
        df = load_hh_rlhf(data.subsets, files)
        row = df.groupby("subset", sort=False).cumcount()
        df["pair_id"] = [f"hh-rlhf:{s}/{data.split}:{i}" for s, i in zip(df["subset"], row)]
    if max_pairs is not None and max_pairs < len(df):
        df = df.loc[sorted(_hash_order(df["pair_id"], MAX_PAIRS_SEED)[:max_pairs])]
    ties = int((df["chosen"].str.strip() == df["rejected"].str.strip()).sum())
    if ties:
        log.warning("%d of %d pairs have identical chosen and rejected responses (no preference)", ties, len(df))
    df = df.assign(source=source)
    if "topic" not in df.columns:
        df["topic"] = ""
    return df[PAIR_COLUMNS].astype(str).reset_index(drop=True)


def unique_prompts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Unique prompts in first-seen order -> prompt_id, text, n_pairs, topic (of the first occurrence).

    First-seen order means appending pairs only appends prompts (existing rows and chunks stay put).
    """
    first = pairs.drop_duplicates("prompt", keep="first")
    counts = pairs["prompt"].value_counts()
    topic = first["topic"] if "topic" in first.columns else pd.Series("", index=first.index)
    out = pd.DataFrame(
        {
            "prompt_id": [prompt_id(t) for t in first["prompt"]],
            "text": first["prompt"].to_numpy(),
            "n_pairs": first["prompt"].map(counts).astype("int64").to_numpy(),
            "topic": topic.fillna("").astype(str).to_numpy(),
        }
    )
    if out["prompt_id"].duplicated().any():  # 64-bit collision: astronomically unlikely, but joins rely on it
        raise ValueError("prompt_id collision between distinct prompts")
    return out


def _hash_order(ids: pd.Series, seed: int) -> pd.Index:
    """Row labels ordered by a seeded hash of the (prompt or pair) id: independent of row order, stable when data is
    appended."""
    keys = ids.map(lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    return keys.sort_values(kind="stable").index


def holdout_split(prompts: pd.DataFrame, n_pool: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, pool): the `n_pool` prompts with the smallest seeded hash of their id are held out, never trained on.

    The pool does not depend on the density weights, so both arms train on the same prompts whatever k-NN settings
    are used, and the uniform arm never reruns when only the weights change. Pool rows come in hash order.
    """
    held = _hash_order(prompts["prompt_id"], seed)[:n_pool]
    mask = prompts.index.isin(held)
    return prompts[~mask].reset_index(drop=True), prompts.loc[held].reset_index(drop=True)


def stratified_eval(
    pool: pd.DataFrame, weights: pd.Series, n: int, rare_fraction: float, rare_quantile: float, seed: int
) -> pd.DataFrame:
    """The evaluated prompts: `n` from the held-out pool, `rare_fraction` of them from the rare stratum.

    weights: the density weight of every prompt (indexed by prompt_id); the rare stratum is the top `rare_quantile`
    of all prompts' weights, the rest is dense. Within a stratum prompts are taken in seeded hash order; a stratum
    with too few pool prompts is filled from the other. Returns pool rows with a `stratum` column.
    """
    cut = weights.quantile(1.0 - rare_quantile)
    stratum = pool["prompt_id"].map(weights).ge(cut).map({True: "rare", False: "dense"})
    pool = pool.assign(stratum=stratum.to_numpy())
    order = _hash_order(pool["prompt_id"], seed + 1)
    rare = [i for i in order if pool.at[i, "stratum"] == "rare"]
    dense = [i for i in order if pool.at[i, "stratum"] == "dense"]
    n_rare = min(len(rare), round(rare_fraction * n))
    n_dense = min(len(dense), n - n_rare)
    n_rare = n - n_dense  # fill from the other stratum when one runs short
    return pool.loc[rare[:n_rare] + dense[:n_dense]].reset_index(drop=True)


def topic_groups(topics: pd.Series) -> dict[str, str] | None:
    """topic -> 'dense' (>= 5% of prompts and >= 5 prompts) or 'rare'; None when the prompts carry no topics."""
    topics = topics.astype(str)
    if not (topics != "").any():
        return None
    counts = topics.value_counts()
    cut = max(5, 0.05 * len(topics))
    return {t: ("dense" if c >= cut else "rare") for t, c in counts.items() if t}


def n_turns(texts: pd.Series) -> pd.Series:
    """Number of Human turns of each HH prompt."""
    return texts.str.count(HUMAN_TAG).clip(lower=1)


# -----------------------------------------------------------------------------
# steps


def run(input: dict, output: dict, params: dict) -> dict:
    """Rule pairs: the configured source -> pairs.parquet (hh-rlhf without a mirror: params.hub_files downloaded)."""
    data = DataConfig.from_params(params["data"])
    files = input["files"] or [str(_hub_download(name)) for name in params["hub_files"]]
    pairs = load_pairs(data, files)
    per_subset = ", ".join(f"{k} {v['pairs']:,}" for k, v in subset_counts(pairs).items())
    log.info("%s pairs%s: %s", f"{len(pairs):,}", f" (data.max_pairs={data.max_pairs}, a seeded sample)" if data.max_pairs else "", per_subset)
    write_parquet(pairs, output["pairs"])
    return {"n_pairs": len(pairs)}


def subset_counts(pairs: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Pairs and unique prompts per subset (in the order subsets first appear); a prompt in two subsets counts in each."""
    groups = pairs.groupby("subset", sort=False)["prompt"]
    return {str(name): {"pairs": int(g.size), "prompts": int(g.nunique())} for name, g in groups}


def run_prompts(input: dict, output: dict, params: dict) -> dict:
    """Checkpoint unique_prompts: unique prompts in first-seen order -> prompts.parquet and its summary JSON."""
    pairs = pd.read_parquet(input["pairs"])
    prompts = unique_prompts(pairs)
    groups = topic_groups(prompts["topic"])
    chars = prompts["text"].str.len()
    summary = {
        "n_pairs": len(pairs),
        "n_prompts": len(prompts),
        "n_multi_turn": int((n_turns(prompts["text"]) > 1).sum()),
        "chars_mean": float(chars.mean()) if len(chars) else 0.0,
        "chars_max": int(chars.max()) if len(chars) else 0,
        "sources": pairs["source"].value_counts().to_dict(),
        "subsets": subset_counts(pairs),
        "topics": None if groups is None else {
            "dense": sorted(t for t, g in groups.items() if g == "dense"),
            "n_rare": sum(g == "rare" for g in groups.values()),
            "n_prompts_dense": int(prompts["topic"].map(groups).eq("dense").sum()),
            "n_prompts_rare": int(prompts["topic"].map(groups).eq("rare").sum()),
        },
    }  # fmt: skip
    write_parquet(prompts, output["prompts"], row_group_size=PROMPT_ROW_GROUP)
    write_json(summary, output["summary"])
    return {"n_prompts": len(prompts)}

