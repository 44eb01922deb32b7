"""A tiny Llama for the GGUF and llama.cpp tests: the trained BPE tokenizer of `tests.tasks`, and
a random Llama whose MLP is 256 wide (so ``ffn_down`` rows take a k-quant's 256-weight blocks)
and whose weights are drawn wider than Hugging Face's 0.02 (so the next-token distributions are
not flat and top-1 agreement means something)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tasks.builders import sentences, train_tokenizer

TEXT = "The cat sat on the mat. Then it ran under the big green tree, quickly!\n  Yesterday: 42."


def save_tiny_llama(path: Path, seed: int = 0, *, hidden: int = 64, layers: int = 2) -> Path:
    """The tiny Llama (``hidden`` wide, ``layers`` blocks) and its tokenizer, saved to ``path``."""
    tokenizer = train_tokenizer(path, sentences(400, seed=1))
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.15,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def load_float(path: Path) -> torch.nn.Module:
    return transformers.LlamaForCausalLM.from_pretrained(str(path)).float().eval()
