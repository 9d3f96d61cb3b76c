"""Tiny causal LMs and tokenizers built from a config, for tests, benchmarks and offline demos.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained on the given texts,
and models are randomly initialised (seeded) GPT-2, Qwen2 or Llama configurations.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

from sample_effect.errors import ConfigError, SampleEffectError, literal

ARCHS = ("gpt2", "qwen2", "llama")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, eos: str | None = "<|endoftext|>", pad: str | None = None,
    chat_template: bool = True,
) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [t for t in (eos, pad, "<|end|>") if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    kwargs: dict[str, Any] = {"tokenizer_object": tok}
    if eos:
        kwargs["eos_token"] = eos
    if pad:
        kwargs["pad_token"] = pad
    fast = PreTrainedTokenizerFast(**kwargs)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str, vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 4, max_len: int = 512) -> Any:
    """A small config of the given architecture (eager attention, no KV cache, no dropout)."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab_size, n_positions=max_len, n_embd=hidden, n_layer=layers, n_head=heads,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    elif arch in ("qwen2", "llama"):
        cls = Qwen2Config if arch == "qwen2" else LlamaConfig
        cfg = cls(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=max_len,
            tie_word_embeddings=(arch == "qwen2"),
        )
    else:
        raise SampleEffectError(f"unknown architecture '{arch}'; choose one of {', '.join(ARCHS)}")
    cfg.use_cache = False
    cfg._attn_implementation = "eager"
    return cfg


def build_tiny_model(
    arch: str, tokenizer: Any, dtype: torch.dtype = torch.float32, seed: int = 0, vocab_size: int | None = None,
    **config_kwargs: Any,
) -> torch.nn.Module:
    """A seeded, randomly initialised causal LM sized for the tokenizer (or `vocab_size` logits, if larger)."""
    from transformers import AutoModelForCausalLM

    if vocab_size is not None and vocab_size < len(tokenizer):
        raise SampleEffectError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    cfg = tiny_config(arch, vocab_size=vocab_size or len(tokenizer), **config_kwargs)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        cfg.eos_token_id = eos
        cfg.bos_token_id = eos
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").to(dtype)
    model.eval()
    return model


def save_model(model: torch.nn.Module, tokenizer: Any, path: str | os.PathLike) -> None:
    """save_pretrained for the model (safetensors) and tokenizer into one directory."""
    from sample_effect.models.loading import quiet_hf_progress

    quiet_hf_progress()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))


def init_tiny_student(
    source: str | os.PathLike, out: str | os.PathLike, arch: str = "qwen2", hidden: int = 64, layers: int = 2,
    heads: int = 4, max_len: int = 2048, seed: int = 0, dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """A fresh tiny model that shares the tokenizer of the model directory `source` (e.g. a teacher), saved to `out`.

    The tokenizer is copied as is (vocabulary, EOS, chat template), and the model outputs as many
    logits per token as the source's config says (`vocab_size`, which may exceed len(tokenizer) when
    the embedding is padded), so `distill` can compare the two models' per-token distributions.
    """
    import json
    from pathlib import Path

    from sample_effect.models.loading import load_tokenizer, quiet_hf_progress

    quiet_hf_progress()
    src = Path(source)
    if not src.is_dir():
        raise ConfigError("init_tiny_student", f"<source>: no model directory at {literal(src)}")
    tok = load_tokenizer(src)
    if getattr(tok, "eos_token_id", None) is None:
        raise SampleEffectError(f"the tokenizer of {src} has no EOS token; sampling needs one to stop")
    vocab = len(tok)
    cfg_file = src / "config.json"
    if cfg_file.exists():
        vocab = max(vocab, int(json.loads(cfg_file.read_text()).get("vocab_size") or 0))
    model = build_tiny_model(arch, tok, dtype, seed=seed, vocab_size=vocab, hidden=hidden, layers=layers, heads=heads,
                             max_len=max_len)
    bos = getattr(tok, "bos_token_id", None)
    if bos is not None:
        model.config.bos_token_id = bos
    save_model(model, tok, out)
    return model
