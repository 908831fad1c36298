"""A tiny random Llama + byte-level BPE tokenizer, saved as a local HF model folder (for fast tests)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|unk|>"]  # pad, eos (also bos), unk

CORPUS = [
    "Human: How do I make a good risotto with mushrooms?",
    "Assistant: Toast the rice, add warm stock slowly and stir often.",
    "Human: What is the capital of France? Assistant: Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "Can you help me write an email to my landlord about the heating?",
    "I want to learn the guitar. Where should I start?",
    "Tell me a joke about computers and programmers.",
    "What are some healthy breakfast ideas for kids?",
]


def build_tokenizer(vocab_size: int = 320) -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE trained in memory: every byte is in the vocab, so no text is ever unknown."""
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|unk|>",
        model_max_length=256,
    )


def build_tiny_model(out_dir: Path, tie: bool = True, seed: int = 0) -> Path:
    """Save a tiny random LlamaForCausalLM + tokenizer to `out_dir` (safetensors); returns `out_dir`."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
