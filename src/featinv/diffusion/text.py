"""Text side of the base model: a CLIP tokenizer and text encoder.

The paper's miniSD brings its own CLIP. The embedded base model has no pretrained text encoder to
load offline, so it uses a character-level CLIP tokenizer (byte-level alphabet, no merges) and a
small CLIP text encoder that stays frozen at its seeded initialisation: its only job is to give the
fixed prompt and the empty prompt two distinct, fixed embeddings, which is all classifier-free
guidance on a fixed prompt needs.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

MAX_LENGTH = 77


def _byte_alphabet() -> list[str]:
    """CLIP/GPT-2's reversible map of the 256 byte values to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def char_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the byte alphabet (with and without end-of-word marks)."""
    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def small_text_encoder(vocab_size: int, hidden: int, layers: int, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 4,
                            num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32),
                            max_position_embeddings=MAX_LENGTH, projection_dim=hidden,
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    return CLIPTextModel(config).eval().requires_grad_(False)


@torch.no_grad()
def encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    """(len(prompts), 77, D) hidden states, as Stable Diffusion conditions its UNet."""
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    param = next(text_encoder.parameters())
    return text_encoder(ids.to(param.device))[0].float()
