"""Hugging Face models and tokenizers for :mod:`kdlib.lm`, built offline (``kdlib[hf]``).

:class:`kdlib.lm.SequenceDistiller`, :func:`kdlib.lm.token_kd_loss` and the other functions of
:mod:`kdlib.lm` take Hugging Face causal language models as they take a
:class:`kdlib.models.TinyGPT`: they read the ``.logits`` of the model's output
(:func:`kdlib.lm.logits_of`), treat negative labels such as ``-100`` as positions that are not
predicted, and :func:`kdlib.lm.from_hf_batch` turns ``input_ids``, ``labels`` and
``attention_mask`` into kdlib's shifted ``(inputs, targets)``. This module builds what a course
without downloads needs:

- :func:`word_tokenizer`: a ``PreTrainedTokenizerFast`` whose tokens are the words of a
  vocabulary (e.g. :class:`kdlib.lm.SentenceSource`'s), made in memory with ``tokenizers``; the
  ids are the vocabulary's positions, so its ids are kdlib's.
- :func:`causal_lm`: a randomly initialised ``transformers`` causal LM (GPT-2 or Llama) from a
  config: no weights are downloaded.

Everything here imports ``transformers`` and ``tokenizers`` only when called; without them the
functions raise ``ImportError`` saying what to install.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

__all__ = ["available", "word_tokenizer", "causal_lm"]

MISSING = 'needs the Hugging Face extra: pip install "kdlib[hf]" (transformers, tokenizers, trl)'


def available() -> bool:
    """Whether ``transformers`` and ``tokenizers`` are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "tokenizers"))


def _require() -> None:
    if not available():
        raise ImportError(f"kdlib.hf {MISSING}")


def word_tokenizer(vocab: list[str], pad: str = "<pad>", bos: str = "<s>", eos: str = "."):
    """A ``transformers.PreTrainedTokenizerFast`` that splits text at whitespace and maps each
    word to its position in ``vocab`` (token ``i`` is ``vocab[i]``).

    ``pad``, ``bos`` and ``eos`` must be in ``vocab``; they become the tokenizer's pad, bos and
    eos tokens (a word outside the vocabulary is encoded as ``pad`` and would be masked).
    Padding is on the right (what :func:`kdlib.lm.from_hf_batch` needs). Built in memory with
    ``tokenizers`` (a ``WordLevel`` model and a whitespace pre-tokenizer): nothing downloaded.
    """
    _require()
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(vocab)) != len(vocab):
        raise ValueError("vocab has repeated words")
    for name, word in (("pad", pad), ("bos", bos), ("eos", eos)):
        if word not in vocab:
            raise ValueError(f"{name} token {word!r} is not in vocab")
    stoi = {w: i for i, w in enumerate(vocab)}
    core = Tokenizer(models.WordLevel(vocab=stoi, unk_token=pad))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=pad
    )
    tokenizer.padding_side = "right"
    return tokenizer


def causal_lm(
    vocab_size: int,
    context: int,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    family: str = "gpt2",
    seed: int = 0,
    pad_token: int | None = None,
    bos_token: int | None = None,
    eos_token: int | None = None,
) -> nn.Module:
    """A randomly initialised ``transformers`` causal LM (``GPT2LMHeadModel`` or
    ``LlamaForCausalLM``) built from its config: ``vocab_size`` tokens, ``context`` positions,
    width ``d_model``, ``n_layers`` blocks of ``n_heads`` heads (a 4x MLP), no dropout, the
    output layer tied to the embedding. ``seed`` fixes the initial weights. Its forward takes
    ``(B, T)`` token ids and returns an output whose ``.logits`` are ``(B, T, vocab_size)``;
    ``model.context`` is set, so :func:`kdlib.lm.generate` slides its window past it."""
    _require()
    import transformers

    if family not in ("gpt2", "llama"):
        raise ValueError(f"family must be 'gpt2' or 'llama', got {family!r}")
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    ids = dict(pad_token_id=pad_token, bos_token_id=bos_token, eos_token_id=eos_token)
    if family == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab_size,
            n_positions=context,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
        cls = transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig(
            vocab_size=vocab_size,
            max_position_embeddings=context,
            hidden_size=d_model,
            intermediate_size=4 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_heads,
            tie_word_embeddings=True,
            **ids,
        )
        cls = transformers.LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.context = context
    return model
