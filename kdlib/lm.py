"""Distilling language models: per-token losses, generation, and three ways to distil sequences.

A language model is a classifier applied at every position: from tokens ``x_0 .. x_t`` it
predicts a distribution over the ``V`` tokens of the vocabulary for ``x_{t+1}``. Its logits have
shape ``(B, T, V)``, and distillation compares the teacher's and the student's next-token
distributions token by token, averaged over the tokens that count (a ``mask`` leaves out
padding, prompts, ...):

    forward  KL(p_T || p_S)   mode covering: the student spreads over everything the teacher
                              finds plausible (Hinton et al. 2015, token by token)
    reverse  KL(p_S || p_T)   mode seeking: the student may drop some of the teacher's modes
                              but is punished for mass where the teacher has none (per token;
                              MiniLLM, Gu et al. 2024, minimises the reverse KL of whole
                              sequences by policy gradient instead, not implemented here)
    jsd      generalized Jensen-Shannon divergence with weight beta (GKD, Agarwal et al. 2024)

:func:`token_kd_loss` computes them. Three training regimes differ in *which sequences* the
tokens come from (:class:`SequenceDistiller`):

- ``"token"`` (off-policy, word-level KD of Kim & Rush 2016): the training text; at every
  position the student matches the teacher's whole next-token distribution;
- sequence-level KD (Kim & Rush 2016): the student is trained with plain cross-entropy on text
  the teacher *generated* (:func:`sequence_kd_dataset`), without the teacher's probabilities;
- ``"on_policy"`` (GKD): the student generates sequences itself and the teacher scores every
  token of them; the student learns on the contexts it will meet when it generates.

The teacher's distributions are large for long vocabularies: :func:`top_k_teacher` keeps the
``k`` largest probabilities per token, :func:`with_tail` and :func:`student_top_k` compare the
two models on those ``k`` tokens and one tail bucket (a student equal to the teacher has loss
0), :func:`cache_top_k` stores them on disk (:class:`TopKLogits`) for offline distillation, and
:func:`chunked_token_kd_loss` computes the loss a chunk of tokens at a time. Hugging Face causal
LMs work wherever a TinyGPT does (:func:`logits_of`, :func:`from_hf_batch`, :mod:`kdlib.hf`).
:func:`acceptance_rate` measures a student as the draft model of speculative decoding.

For measuring, :class:`SentenceSource` is a small probabilistic grammar whose true next-token
distribution is known at every position, so the exact KL of a model to the truth can be computed,
not only its perplexity; :func:`load_text_corpus` reads a user's own text instead.

References: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS Deep
Learning Workshop 2014, arXiv:1503.02531. Kim & Rush, "Sequence-Level Knowledge Distillation",
EMNLP 2016, arXiv:1606.07947. Agarwal et al., "On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649. Gu et al., "MiniLLM:
Knowledge Distillation of Large Language Models", ICLR 2024, arXiv:2306.08543.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.data import TensorLoader
from kdlib.distill import Distiller
from kdlib.losses import IGNORE_INDEX
from kdlib.runtime import device_of

__all__ = [
    "DIVERGENCES",
    "token_kd_loss",
    "chunked_token_kd_loss",
    "generate",
    "mask_after_eos",
    "sequence_log_probs",
    "next_token_loader",
    "sequence_kd_dataset",
    "SequenceDistiller",
    "from_hf_batch",
    "TopKLogits",
    "cache_top_k",
    "logits_of",
    "top_k_teacher",
    "with_tail",
    "student_top_k",
    "expand_top_k",
    "top_k_error",
    "tail_mass",
    "Corpus",
    "SentenceSource",
    "load_text_corpus",
    "kl_to_truth",
    "acceptance_rate",
    "distinct_ngrams",
    "lm_reference",
    "lm_metrics",
]

DIVERGENCES = ("forward", "reverse", "jsd")


# --- the per-token loss -----------------------------------------------------------------------


def _check_token_logits(student_logits, teacher_logits, mask, vocab_size, finite=True) -> None:
    for name, z in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(z, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(z).__name__}")
        if z.dim() != 3:
            raise ValueError(f"{name} must have shape (B, T, V), got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"{name} must be floating point logits, got {z.dtype}")
    s, t = student_logits.shape, teacher_logits.shape
    if s[:2] != t[:2]:
        raise ValueError(
            f"student_logits {tuple(s)} and teacher_logits {tuple(t)} must cover the same "
            "(B, T) tokens"
        )
    if vocab_size is not None:
        if not isinstance(vocab_size, int) or not 2 <= vocab_size <= min(s[2], t[2]):
            raise ValueError(
                f"vocab_size must be an int between 2 and the smaller vocabulary "
                f"({min(s[2], t[2])}), got {vocab_size!r}"
            )
    elif s[2] != t[2]:
        raise ValueError(
            f"the student's vocabulary has {s[2]} tokens and the teacher's {t[2]}: "
            "token-level distillation needs one tokenizer for both (the same vocabulary, in the "
            "same order); if they share one and only their output layers are padded to "
            "different sizes, pass vocab_size= the tokenizer's size"
        )
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"mask must be a tensor of shape (B, T), got {type(mask).__name__}")
        if tuple(mask.shape) != tuple(s[:2]):
            raise ValueError(
                f"mask must have shape (B, T) = {tuple(s[:2])}, got {tuple(mask.shape)}"
            )
    for name, z in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if finite and not bool(torch.isfinite(z[..., :vocab_size]).all()):
            raise ValueError(f"{name} contain NaN or inf")


def _per_token_divergence(log_p_s, log_p_t, divergence: str, beta: float) -> torch.Tensor:
    """``(B, T)`` divergences between two ``(B, T, V)`` log-distributions, summed over ``V``."""
    if divergence == "forward":
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    if divergence == "reverse":
        return (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
    # jsd: M = beta * p_T + (1 - beta) * p_S, in log space
    log_m = torch.logsumexp(
        torch.stack([log_p_t + math.log(beta), log_p_s + math.log1p(-beta)]), dim=0
    )
    kl_t = (log_p_t.exp() * (log_p_t - log_m)).sum(-1)
    kl_s = (log_p_s.exp() * (log_p_s - log_m)).sum(-1)
    return beta * kl_t + (1.0 - beta) * kl_s


def _reduce(per_token: torch.Tensor, mask, reduction: str) -> torch.Tensor:
    if mask is not None:
        per_token = per_token * mask.to(per_token.dtype)
    if reduction == "none":
        return per_token
    count = per_token.numel() if mask is None else mask.to(per_token.dtype).sum().clamp_min(1)
    return per_token.sum() / count


def _check_options(temperature, divergence, beta, reduction) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)) or (
        temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "jsd" and not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
        raise ValueError(
            f"beta must lie strictly between 0 and 1 for the JSD, got {beta!r} (the JSD is 0 at "
            "both ends; use divergence='forward' or 'reverse' for the limits)"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def token_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    divergence: str = "forward",
    beta: float = 0.5,
    reduction: str = "mean",
    vocab_size: int | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Per-token distillation loss between two language models, averaged over unmasked tokens.

    Args:
        student_logits, teacher_logits: ``(B, T, V)`` next-token logits over one vocabulary.
            The teacher's are detached (no gradient flows into the teacher).
        mask: ``(B, T)``, true (or 1) for the tokens that count; ``None``: all ``B * T``.
        temperature: ``tau > 0``; both distributions are ``softmax(logits / tau)``. The value
            is *not* multiplied by ``tau^2`` here (:class:`SequenceDistiller` does that).
        divergence: with ``p_T``, ``p_S`` the teacher's and student's distributions at a token,

            - ``"forward"``: ``KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v))``;
            - ``"reverse"``: ``KL(p_S || p_T)``;
            - ``"jsd"``: ``beta KL(p_T || M) + (1 - beta) KL(p_S || M)`` with
              ``M = beta p_T + (1 - beta) p_S`` (GKD's generalized JSD with P = teacher,
              Q = student; TRL's ``generalized_jsd_loss`` uses the same ``beta``). It is 0 at
              ``beta = 0`` and ``1``; scaled, it approaches the two KLs at the ends:
              ``JSD / beta -> forward`` as ``beta -> 0`` and ``JSD / (1 - beta) -> reverse``
              as ``beta -> 1``.
        beta: the JSD's weight, ``0 < beta < 1``; ignored by the two KLs.
        reduction: ``"mean"`` (a scalar: the sum over unmasked tokens divided by their number,
            0 when there are none), ``"sum"`` (the sum over unmasked tokens) or ``"none"`` (the
            ``(B, T)`` values, 0 at masked tokens).
        vocab_size: models that share one tokenizer but pad their output layers to different
            sizes (for instance 152,064 and 151,936 rows for 151,665 tokens): both logits are
            cut to their first ``vocab_size`` columns, the tokenizer's tokens, before the
            softmax. ``None``: the two vocabularies must have the same size.
        check: check the inputs (shapes, vocabularies, mask, finite logits, options) and raise
            ``ValueError`` naming the argument at fault. The checks synchronise with the device
            (they read values); ``check=False`` skips them and runs the same formula, for a
            training loop that has checked its first batch (:class:`SequenceDistiller`).

    Computed in log space (``log_softmax`` on both sides, the JSD's mixture by ``logsumexp``),
    in float32 whatever the input dtype (float64 stays float64).
    """
    if check:
        _check_token_logits(student_logits, teacher_logits, mask, vocab_size)
        _check_options(temperature, divergence, beta, reduction)
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    z_s, z_t = student_logits, teacher_logits.detach()
    if vocab_size is not None:
        z_s, z_t = z_s[..., :vocab_size], z_t[..., :vocab_size]
    log_p_s = F.log_softmax(z_s.to(dtype) / temperature, dim=-1)
    log_p_t = F.log_softmax(z_t.to(dtype) / temperature, dim=-1)
    per_token = _per_token_divergence(log_p_s, log_p_t, divergence, float(beta))
    if reduction == "sum":
        return _reduce(per_token, mask, "none").sum()
    return _reduce(per_token, mask, reduction)


class _ChunkedTokenKD(torch.autograd.Function):
    """The loss and its gradients, one block of ``chunk_size`` tokens by ``vocab_chunk_size``
    vocabulary columns at a time, all in the forward pass; the backward pass only scales the
    gradients (so no block's logits are kept). Three passes over the vocabulary per chunk of
    tokens: the softmax normalisers, then the value and ``sum_v dL/dlog p_S(v)``, then the
    logits' gradient (see :func:`chunked_token_kd_loss`)."""

    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, mask, chunk_size, vocab_chunk_size, options):
        tau, divergence = options["temperature"], options["divergence"]
        beta = float(options["beta"])
        vocab = options["vocab_size"] or w_s.shape[0]
        dtype = torch.float64 if h_s.dtype == torch.float64 else torch.float32
        count = mask.sum().clamp_min(1).to(dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need = need_h or need_w
        grad_h = torch.zeros_like(h_s, dtype=dtype) if need_h else None
        grad_w = torch.zeros_like(w_s, dtype=dtype) if need_w else None
        total = torch.zeros((), dtype=dtype, device=h_s.device)
        columns = [
            slice(v, min(v + vocab_chunk_size, vocab)) for v in range(0, vocab, vocab_chunk_size)
        ]

        def logits(h, w, cols):  # one block of logits / tau
            return (h @ w[cols].to(dtype).T).div_(tau)

        def block(cols, hs, ht, lse_s, lse_t, m):
            """``(value, dL/dlog p_S, log p_S)`` of one block: token_kd_loss's per-token formula
            on normalised log-probabilities, summed over the block's columns."""
            log_p_s = logits(hs, w_s, cols).sub_(lse_s[:, None]).requires_grad_(need)
            log_p_t = logits(ht, w_t, cols).sub_(lse_t[:, None])
            with torch.enable_grad():
                per_token = _per_token_divergence(log_p_s, log_p_t, divergence, beta)
                value = (per_token * m).sum()
            grad = torch.autograd.grad(value, log_p_s)[0] if need else None
            return value.detach(), grad, log_p_s.detach()

        for start in range(0, h_s.shape[0], chunk_size):
            part = slice(start, start + chunk_size)
            hs, ht, m = h_s[part].to(dtype), h_t[part].to(dtype), mask[part].to(dtype)
            lse_s = torch.stack([logits(hs, w_s, c).logsumexp(-1) for c in columns]).logsumexp(0)
            lse_t = torch.stack([logits(ht, w_t, c).logsumexp(-1) for c in columns]).logsumexp(0)

            # the value, and per token the sum over the vocabulary of dL/dlog p_S(v)
            grad_sum = torch.zeros_like(lse_s)
            for cols in columns:
                value, grad, _ = block(cols, hs, ht, lse_s, lse_t, m)
                total += value
                if need:
                    grad_sum += grad.sum(-1)
            if not need:
                continue
            # log p_S = z / tau - logsumexp(z / tau): dL/dz = (dL/dlog p_S - p_S * grad_sum) / tau
            for cols in columns:
                _, grad, log_p_s = block(cols, hs, ht, lse_s, lse_t, m)
                dz = grad.sub_(log_p_s.exp_().mul_(grad_sum[:, None])).div_(tau)
                if need_h:
                    grad_h[part] += dz @ w_s[cols].to(dtype)
                if need_w:
                    grad_w[cols] += dz.T @ hs
        for g in (grad_h, grad_w):
            if g is not None:
                g.div_(count)
        # kept on ctx, not saved: backward hands them over without a copy (autograd clones a
        # gradient that something else still references before storing it in .grad)
        ctx.grads, ctx.dtypes = [grad_h, grad_w], (h_s.dtype, w_s.dtype)
        return total / count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        out = []
        for i in (0, 1):  # scaled in place and handed over: the graph is used once
            g, ctx.grads[i] = ctx.grads[i], None
            out.append(g.mul_(grad_out).to(ctx.dtypes[i]) if g is not None else None)
        return out[0], out[1], None, None, None, None, None, None


def chunked_token_kd_loss(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    divergence: str = "forward",
    beta: float = 0.5,
    vocab_size: int | None = None,
    chunk_size: int = 1024,
    vocab_chunk_size: int = 2048,
    check: bool = True,
) -> torch.Tensor:
    """:func:`token_kd_loss` (``reduction="mean"``) for large vocabularies, a block of tokens and
    vocabulary columns at a time, from the models' last hidden states and output layers
    instead of their logits.

    Args:
        student_hidden, teacher_hidden: ``(B, T, d_S)`` and ``(B, T, d_T)``, the inputs of the
            output layers (e.g. a Hugging Face model's ``hidden_states[-1]`` after its final norm).
        student_head, teacher_head: ``(V_S, d_S)`` and ``(V_T, d_T)``, the output layers'
            weights (``model.lm_head.weight``; no bias); the logits are ``hidden @ head.T``.
        mask, temperature, divergence, beta, vocab_size, check: as in :func:`token_kd_loss`.
        chunk_size: tokens per chunk.
        vocab_chunk_size: vocabulary columns per block (the last block may be smaller).

    The value and the gradients (with respect to ``student_hidden`` and ``student_head``) are
    those of ``token_kd_loss(student_hidden @ student_head.T, teacher_hidden @ teacher_head.T,
    mask, ...)`` to float rounding, with the same per-token formula (token_kd_loss's, on
    normalised log-probabilities, summed block by block: every divergence here is a sum over
    the vocabulary). The full ``(B, T, V)`` logits never exist, nor do one chunk's: for each
    chunk of tokens, three passes over blocks of ``chunk_size x vocab_chunk_size`` logits
    (recomputed from the hidden states each time) give the softmax normalisers
    ``logsumexp(z / tau)``, then the value and ``S = sum_v dL/dlog p_S(v)`` per token (autograd
    on one block), then the logits' gradient ``(dL/dlog p_S - p_S S) / tau`` (the backward of
    ``log_softmax``), multiplied into the hidden states' and the head's gradients. All of this
    happens in the forward pass; the gradients are kept (``B T d_S + V d_S`` numbers) and scaled
    in the backward pass, which can run once (no ``retain_graph``). Peak extra memory: the
    intermediate tensors of one block (about ten to twenty blocks for the three divergences)
    plus the gradients; with the default blocks of 2,048 columns that is about one or two
    ``chunk_size x V`` tensors at ``V = 32,000`` and less above (``benchmarks/lm_memory.py``
    measures it). The price is time: every block of logits is computed three times (twice when
    no gradient is needed) instead of once. No gradient reaches the teacher.
    """
    if check:
        for name, h in (("student_hidden", student_hidden), ("teacher_hidden", teacher_hidden)):
            if not isinstance(h, torch.Tensor) or h.dim() != 3 or not h.is_floating_point():
                raise ValueError(f"{name} must be a floating point (B, T, d) tensor")
        for name, w, h in (
            ("student_head", student_head, student_hidden),
            ("teacher_head", teacher_head, teacher_hidden),
        ):
            if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.shape[1] != h.shape[2]:
                raise ValueError(
                    f"{name} must be a (V, d) weight with d = {h.shape[2]} (the hidden size)"
                )
        if student_hidden.shape[:2] != teacher_hidden.shape[:2]:
            raise ValueError(
                f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden "
                f"{tuple(teacher_hidden.shape)} must cover the same (B, T) tokens"
            )
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        if not isinstance(vocab_chunk_size, int) or vocab_chunk_size < 1:
            raise ValueError(f"vocab_chunk_size must be an int >= 1, got {vocab_chunk_size!r}")
        b, t = student_hidden.shape[:2]
        shape_s, shape_t = (b, t, student_head.shape[0]), (b, t, teacher_head.shape[0])
        _check_token_logits(
            torch.empty(()).expand(*shape_s),
            torch.empty(()).expand(*shape_t),
            mask,
            vocab_size,
            finite=False,
        )
        _check_options(temperature, divergence, beta, "mean")
    n = student_hidden.shape[0] * student_hidden.shape[1]
    keep = (
        torch.ones(n, dtype=torch.bool, device=student_hidden.device)
        if mask is None
        else mask.reshape(n).bool()
    )
    options = dict(temperature=temperature, divergence=divergence, beta=beta, vocab_size=vocab_size)
    return _ChunkedTokenKD.apply(
        student_hidden.reshape(n, -1),
        student_head,
        teacher_hidden.reshape(n, -1).detach(),
        teacher_head.detach(),
        keep,
        chunk_size,
        vocab_chunk_size,
        options,
    )


# --- generating and scoring ---------------------------------------------------------------


def logits_of(output) -> torch.Tensor:
    """The logits of a model's output: the tensor itself (TinyGPT), or ``output.logits`` (a
    Hugging Face causal LM, whose forward returns a ``CausalLMOutput``)."""
    return output if isinstance(output, torch.Tensor) else output.logits


def _takes_cache(model: nn.Module) -> str | None:
    """How ``model`` keeps a KV cache: ``"kdlib"`` (a ``cache`` list, TinyGPT), the name of a
    Hugging Face model's cache argument (``"cache"`` in transformers 5, ``"past_key_values"``
    before), or ``None``."""
    params = inspect.signature(model.forward).parameters
    if "use_cache" in params:  # a Hugging Face model
        for name in ("past_key_values", "cache"):
            if name in params:
                return name
        return None
    return "kdlib" if "cache" in params else None


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    eos_token: int | None = None,
    pad_token: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Sample ``max_new_tokens`` tokens after ``prompt`` from ``model``, one at a time.

    ``prompt``: ``(B, T0)`` token ids. Returns ``(B, T0 + max_new_tokens)``. Each new token is
    drawn from ``softmax(logits / temperature)`` at the last position (restricted to the
    ``top_k`` most likely tokens when given); ``temperature=0`` takes the most likely token
    (greedy). With ``eos_token``, a row that has produced it continues with ``pad_token``
    (default: ``eos_token``), and generation stops early once every row has. A model with a
    ``context`` attribute sees at most its last ``context`` tokens. Eval mode while sampling;
    the model's mode is restored. ``generator`` (on the model's device) makes it repeatable.

    ``use_cache``: a model that keeps a KV cache (:class:`kdlib.models.TinyGPT`'s ``cache``,
    a Hugging Face model's ``cache`` or ``past_key_values``) runs the prompt once and then
    only each new token, instead of the whole prefix at every step (the same logits up to
    rounding). Past the ``context``, the window slides and every step runs the window again.
    """
    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be a (B, T0) tensor with T0 >= 1, got {prompt!r:.80}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    device = device_of(model)
    tokens = prompt.to(device)
    context = getattr(model, "context", None)
    pad = eos_token if pad_token is None else pad_token
    done = torch.zeros(len(tokens), dtype=torch.bool, device=device)
    kind = _takes_cache(model) if use_cache else None
    cache = None  # the KV cache, once the prompt has run
    was_training = model.training
    model.eval()
    try:
        for step in range(max_new_tokens):
            sliding = context is not None and tokens.shape[1] > context
            if kind is None or sliding:
                window = tokens if context is None else tokens[:, -context:]
                logits = logits_of(model(window))[:, -1].float()
            elif kind == "kdlib":
                new = tokens if cache is None else tokens[:, -1:]
                cache = [] if cache is None else cache
                logits = model(new, cache=cache)[:, -1].float()
            else:
                new = tokens if cache is None else tokens[:, -1:]
                out = model(new, use_cache=True, **{kind: cache})
                cache, logits = out[kind], out.logits[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            if eos_token is not None:
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                done = done | (nxt == eos_token)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            if eos_token is not None and step % 4 == 3 and bool(done.all()):
                break
    finally:
        model.train(was_training)
    missing = prompt.shape[1] + max_new_tokens - tokens.shape[1]
    if missing:  # stopped early: every row is finished, pad to the promised length
        tokens = F.pad(tokens, (0, missing), value=pad)
    return tokens


def mask_after_eos(tokens: torch.Tensor, eos_token: int, start: int = 1) -> torch.Tensor:
    """``(B, L)`` tokens -> ``(B, L - 1)`` mask of the next-token targets that count.

    Target ``t`` (the prediction of ``tokens[:, t + 1]``) counts when ``t + 1 >= start`` (the
    prompt's own tokens are not predicted) and no ``eos_token`` occurs before position
    ``t + 1`` (the first eos is itself a target, what comes after is padding).
    """
    targets = tokens[:, 1:]
    is_eos = (targets == eos_token).long()
    ended_before = (is_eos.cumsum(1) - is_eos) > 0
    positions = torch.arange(1, tokens.shape[1], device=tokens.device)
    return (~ended_before) & (positions >= start)[None, :]


@torch.no_grad()
def sequence_log_probs(
    model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token log-probabilities ``log p(x_{t+1} | x_0..x_t)`` of ``tokens`` under ``model``.

    ``tokens``: ``(B, L)``. Returns ``(B, L - 1)`` (float32), 0 where ``mask`` ``(B, L - 1)``
    is false. Their sum over a row is the sequence's log-likelihood; minus their mean over the
    unmasked tokens is the model's NLL per token (perplexity ``exp(NLL)``).
    """
    device = device_of(model)
    tokens = tokens.to(device)
    was_training = model.training
    model.eval()
    try:
        log_p = F.log_softmax(logits_of(model(tokens[:, :-1])).float(), dim=-1)
    finally:
        model.train(was_training)
    out = log_p.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    if mask is not None:
        out = out * mask.to(device, out.dtype)
    return out


def next_token_loader(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
    return_index: bool = False,
) -> TensorLoader:
    """A loader of ``(inputs, targets)`` for next-token prediction from ``(N, L)`` sequences
    (``(inputs, targets, index)`` with ``return_index``, for a :class:`TopKLogits` cache).

    ``inputs = tokens[:, :-1]`` and ``targets = tokens[:, 1:]``, both ``(N, L - 1)``, with the
    targets where ``mask`` ``(N, L - 1)`` is false set to ``IGNORE_INDEX`` (-1): padding and
    prompts are not predicted. The same ``(x, y)`` batches as the classification loaders, so
    :class:`SequenceDistiller` (a :class:`kdlib.distill.Distiller`) runs them in its loop.
    """
    if tokens.dim() != 2 or tuple(mask.shape) != (tokens.shape[0], tokens.shape[1] - 1):
        raise ValueError(
            f"tokens must be (N, L) and mask (N, L - 1), got {tuple(tokens.shape)} and "
            f"{tuple(mask.shape)}"
        )
    targets = tokens[:, 1:].masked_fill(~mask.bool(), IGNORE_INDEX)
    return TensorLoader(
        tokens[:, :-1],
        targets,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        return_index=return_index,
    )


@torch.no_grad()
def sequence_kd_dataset(
    teacher: nn.Module,
    prompts: torch.Tensor,
    max_new_tokens: int,
    eos_token: int,
    pad_token: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence-level KD's training set (Kim & Rush 2016): the teacher writes the text.

    ``prompts``: ``(N, T0)``. Returns ``(tokens, mask)``: ``(N, T0 + max_new_tokens)`` sequences
    the teacher generated from the prompts (after the first ``eos_token``, ``pad_token``) and
    the ``(N, T0 + max_new_tokens - 1)`` mask of the generated targets (see
    :func:`mask_after_eos`), ready for :func:`next_token_loader`. Kim & Rush take the teacher's
    beam-search output for each source sentence (an approximation of its mode given that
    input); this samples (``temperature=1`` keeps the teacher's distribution). Greedy decoding
    (``temperature=0``) is deterministic: from identical prompts (an unconditional model, every
    prompt ``<s>``) every row is the same sentence, so it only makes sense with varied prompts.
    """
    chunks = [
        generate(
            teacher,
            prompts[i : i + batch_size],
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            eos_token=eos_token,
            pad_token=pad_token,
        ).cpu()
        for i in range(0, len(prompts), batch_size)
    ]
    tokens = torch.cat(chunks)
    return tokens, mask_after_eos(tokens, eos_token, start=prompts.shape[1])


# --- top-k teacher logits -------------------------------------------------------------------


def top_k_teacher(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the teacher's ``k`` most likely tokens per position: what is stored or sent.

    ``teacher_logits``: ``(..., V)``. Returns ``(log_probs, indices)``, both ``(..., k)``: the
    exact log-probabilities (``log_softmax`` over the full vocabulary, not renormalised) of the
    ``k`` top tokens and their ids. ``k`` values and ``k`` ids per token instead of ``V``
    values; the missing mass ``1 - sum(exp(log_probs))`` is implied. float32 (float64 stays
    float64).
    """
    vocab = teacher_logits.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an int between 1 and the vocabulary size {vocab}, got {k!r}")
    dtype = torch.float64 if teacher_logits.dtype == torch.float64 else torch.float32
    log_p = F.log_softmax(teacher_logits.to(dtype), dim=-1)
    return log_p.topk(k, dim=-1)


def _log1mexp_sum(log_probs: torch.Tensor) -> torch.Tensor:
    """``log(1 - sum(exp(log_probs)))`` over the last dimension, kept dim, floored at 1e-30."""
    total = torch.logsumexp(log_probs, dim=-1, keepdim=True).clamp_max(0.0)
    return torch.log((-torch.expm1(total)).clamp_min(1e-30))


def with_tail(log_probs: torch.Tensor) -> torch.Tensor:
    """``(..., k)`` log-probabilities of ``k`` tokens -> the ``(..., k + 1)`` log-distribution
    with one more entry, the **tail bucket**: the log of the mass of every other token,
    ``log(1 - sum_k p)``. Usable as ``teacher_logits`` of :func:`token_kd_loss` (a
    log-distribution is its own logits) against :func:`student_top_k`'s student."""
    return torch.cat([log_probs, _log1mexp_sum(log_probs)], dim=-1)


def student_top_k(student_logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The student's ``(..., k + 1)`` log-distribution over the teacher's top-``k`` tokens
    ``indices`` ``(..., k)`` and one tail bucket for all other tokens (see :func:`with_tail`),
    differentiable with respect to ``student_logits`` ``(..., V)``.

    Distilling on these ``k + 1`` categories (as TRL's distillation from a server's top-k
    log-probabilities does) compares the two models' masses on the kept tokens and on the rest
    *as a whole*: a student equal to the teacher has loss 0, whatever ``k``. What is lost is how
    the teacher spreads the tail among its tokens; the student keeps its own spread there.
    """
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    log_p = F.log_softmax(student_logits.to(dtype), dim=-1)
    return with_tail(log_p.gather(-1, indices))


def expand_top_k(log_probs: torch.Tensor, indices: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A full ``(..., V)`` log-distribution from :func:`top_k_teacher`'s output.

    The ``k`` kept tokens keep their exact probabilities; the remainder ``r = 1 - sum`` is
    spread evenly over the other ``V - k`` tokens (each gets ``r / (V - k)``). This is *one*
    way to rebuild a full distribution, and a poor target for distillation: the tail's real
    tokens and impossible ones get the same share, so a student equal to the teacher no longer
    has loss 0 (:func:`top_k_error` measures the gap). Distil on :func:`with_tail` and
    :func:`student_top_k` instead.
    """
    k = log_probs.shape[-1]
    if k >= vocab_size:
        out = torch.empty(
            *log_probs.shape[:-1], vocab_size, device=log_probs.device, dtype=log_probs.dtype
        )
        return out.scatter_(-1, indices, log_probs)
    remainder = _log1mexp_sum(log_probs).exp().clamp_min(1e-12)
    fill = torch.log(remainder / (vocab_size - k))
    out = fill.expand(*log_probs.shape[:-1], vocab_size).clone()
    return out.scatter_(-1, indices, log_probs)


def top_k_error(teacher_logits: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> float:
    """Mean over (unmasked) positions of ``KL(p_T || p_T^(k))``, in nats: what rebuilding the
    teacher's distribution from its top ``k`` probabilities by spreading the rest evenly
    (:func:`expand_top_k`) loses. ``teacher_logits``: ``(B, T, V)``, ``mask`` ``(B, T)``."""
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    approx = expand_top_k(*top_k_teacher(teacher_logits.float(), k), teacher_logits.shape[-1])
    per_token = (log_p.exp() * (log_p - approx)).sum(-1)
    return float(_reduce(per_token, mask, "mean"))


def tail_mass(teacher_logits: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> float:
    """Mean over (unmasked) positions of the teacher's probability outside its top ``k``: the
    mass that top-``k`` distillation (:func:`student_top_k`) passes on only as one bucket."""
    bucket = with_tail(top_k_teacher(teacher_logits, k)[0])[..., -1].exp()
    return float(_reduce(bucket, mask, "mean"))


@dataclass
class TopKLogits:
    """A teacher's top-``k`` log-probabilities for every token of a corpus, kept on disk.

    ``log_probs``: ``(N, T, k)`` float16, ``indices``: ``(N, T, k)`` int32 (the token ids),
    for the inputs ``tokens[:, :-1]`` of :func:`next_token_loader`; ``vocab_size``: the
    teacher's vocabulary. ``k * (2 + 4)`` bytes per token instead of ``4 V``
    (:attr:`bytes_per_token`). Written once by :func:`cache_top_k`; :meth:`load` maps the file
    into memory (``torch.load(mmap=True)``), so a corpus larger than RAM is read as needed.
    The teacher's log-probabilities are those at ``tau = 1``.
    """

    log_probs: torch.Tensor
    indices: torch.Tensor
    vocab_size: int

    @property
    def bytes_per_token(self) -> int:
        return self.log_probs.shape[-1] * (
            self.log_probs.element_size() + self.indices.element_size()
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = dict(log_probs=self.log_probs, indices=self.indices, vocab_size=self.vocab_size)
        torch.save(state, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TopKLogits:
        state = torch.load(Path(path), mmap=True, weights_only=True)
        return cls(state["log_probs"], state["indices"], int(state["vocab_size"]))


@torch.no_grad()
def cache_top_k(
    teacher: nn.Module,
    tokens: torch.Tensor,
    k: int,
    path: str | Path | None = None,
    batch_size: int = 256,
) -> TopKLogits:
    """Run ``teacher`` once over ``tokens`` ``(N, L)`` and keep its top-``k`` log-probabilities
    per input position (``tokens[:, :-1]``), as a :class:`TopKLogits`; saved to ``path`` when
    given (then read back memory-mapped). Offline distillation then needs no teacher:
    ``SequenceDistiller(student, None, teacher_cache=...)``."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be an (N, L) tensor with L >= 2, got {tokens!r:.80}")
    device = device_of(teacher)
    was_training = teacher.training
    teacher.eval()
    values, ids, vocab = [], [], None
    try:
        for i in range(0, len(tokens), batch_size):
            z = logits_of(teacher(tokens[i : i + batch_size, :-1].to(device)))
            vocab = z.shape[-1]
            lp, idx = top_k_teacher(z, k)
            values.append(lp.half().cpu())
            ids.append(idx.int().cpu())
    finally:
        teacher.train(was_training)
    cache = TopKLogits(torch.cat(values), torch.cat(ids), int(vocab))
    if path is not None:
        return TopKLogits.load(cache.save(path))
    return cache


# --- the training loop ----------------------------------------------------------------------


class SequenceDistiller(Distiller):
    """The :class:`kdlib.distill.Distiller` for language models: ``(B, T, V)`` logits, a mask.

    Batches are ``(inputs, targets)`` from :func:`next_token_loader` (or :func:`from_hf_batch`
    for Hugging Face ``input_ids`` and ``labels``), both ``(B, T)``: ``targets[b, t]`` is the
    token that follows ``inputs[b, :t + 1]``, and a **negative** target (kdlib's -1, Hugging
    Face's and TRL's -100) marks a position that is not predicted (padding, prompt). The
    models are TinyGPTs or Hugging Face causal LMs (their ``.logits`` are used); with right
    padding (what :func:`from_hf_batch` asks for) no attention mask is needed. The
    Distiller's loop is reused as it is: ``fit`` (progress bar, ``history``, checkpoints and
    ``resume``), the optimizer and schedule, and bf16 autocast on CUDA (``amp=True``; the
    losses stay float32); only :meth:`step` differs. Per step:

    - no teacher: ``CE`` of the targets (the student trained on the text alone; sequence-level
      KD is this on :func:`sequence_kd_dataset`'s text);
    - ``mode="token"`` (off-policy): ``alpha * CE + (1 - alpha) * tau^2 * D(p_T, p_S)`` on the
      training text, ``D`` = :func:`token_kd_loss` with ``divergence`` and ``beta``;
    - ``mode="on_policy"`` (GKD): with probability ``lmbda`` the batch is replaced by the
      student's own samples: the first ``prompt_length`` tokens of each input are kept, the
      student continues them (``sample_temperature``, up to ``eos_token``) without gradient,
      and ``tau^2 * D(p_T, p_S)`` is taken on every generated token (the teacher scores the
      student's text; nothing is backpropagated through the sampling). Otherwise the batch is
      used as in ``"token"``. ``alpha`` must be 0: the student's samples carry no labels.
      GKD (Agarwal et al. 2024) recommends the reverse KL or ``jsd`` with a large ``beta``
      (0.9) on-policy.

    ``teacher_top_k``: only the teacher's top ``k`` probabilities per token are used, as if
    only those had been stored: the loss compares the two models on those ``k`` tokens and
    one tail bucket for the rest (:func:`student_top_k`, :func:`with_tail`), at ``tau``.
    ``teacher_cache``: a :class:`TopKLogits` of the training text (offline distillation, no
    teacher model: ``teacher=None``); the loader must yield indices
    (``next_token_loader(..., return_index=True)``); the same ``k + 1`` loss, ``tau = 1``.
    ``vocab_size``: both models share one tokenizer of this many tokens but pad their output
    layers to different sizes; the logits are cut to it (see :func:`token_kd_loss`).

    The first batch of every loader is checked (inputs, targets, logits: errors name the
    argument); later batches run the same formulas with ``check=False``, without host
    synchronisation. Other keyword arguments (``lr``, ``optimizer``, ``device``, ``amp``,
    ``progress``, ...) are the Distiller's. ``history`` holds ``train_loss`` per epoch (and
    ``train_hard``, ``train_soft``); ``generated_tokens`` counts the tokens the student
    sampled, ``teacher_tokens`` the positions the teacher scored, ``student_tokens`` those the
    student trained on.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        mode: str = "token",
        divergence: str = "forward",
        beta: float = 0.5,
        temperature: float = 1.0,
        alpha: float = 0.0,
        lmbda: float = 1.0,
        prompt_length: int = 1,
        eos_token: int | None = None,
        pad_token: int | None = None,
        sample_temperature: float = 1.0,
        teacher_top_k: int | None = None,
        teacher_cache: TopKLogits | None = None,
        vocab_size: int | None = None,
        seed: int = 0,
        **kwargs,
    ):
        if mode not in ("token", "on_policy"):
            raise ValueError(f"mode must be 'token' or 'on_policy', got {mode!r}")
        _check_options(temperature, divergence, beta, "mean")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(
                f"lmbda (the share of on-policy batches) must lie in [0, 1], got {lmbda!r}"
            )
        if teacher_top_k is not None and not (isinstance(teacher_top_k, int) and teacher_top_k):
            raise ValueError(f"teacher_top_k must be an int >= 1 or None, got {teacher_top_k!r}")
        if teacher_cache is not None:
            if not isinstance(teacher_cache, TopKLogits):
                raise ValueError(
                    f"teacher_cache must be a TopKLogits, got {type(teacher_cache).__name__}"
                )
            if teacher is not None or mode != "token" or temperature != 1.0:
                raise ValueError(
                    "teacher_cache is offline distillation: teacher=None, mode='token' and "
                    "temperature=1 (the cache holds the teacher's log-probabilities at tau = 1)"
                )
        if mode == "on_policy":
            if teacher is None:
                raise ValueError("mode='on_policy' needs a teacher to score the student's samples")
            if eos_token is None:
                raise ValueError("mode='on_policy' needs eos_token (where a sample ends)")
            if alpha != 0.0:
                raise ValueError(
                    "mode='on_policy' needs alpha=0: the student's samples have no labels"
                )
        if kwargs.pop("cache_teacher", False):
            raise ValueError(
                "SequenceDistiller has no in-memory logit cache (on-policy inputs change): "
                "use teacher_cache=TopKLogits for a corpus"
            )
        super().__init__(
            student, teacher, temperature=temperature, alpha=alpha, loss=_unused_loss, **kwargs
        )
        self.mode, self.divergence, self.beta = mode, divergence, beta
        self.lmbda, self.prompt_length = lmbda, prompt_length
        self.eos_token = eos_token
        self.pad_token = eos_token if pad_token is None else pad_token
        self.sample_temperature, self.teacher_top_k = sample_temperature, teacher_top_k
        self.teacher_cache, self.vocab_size = teacher_cache, vocab_size
        self.sampler = torch.Generator(device=self.device).manual_seed(seed)
        self.coin = torch.Generator().manual_seed(seed + 1)  # on-policy or not, per batch
        self.generated_tokens = self.teacher_tokens = self.student_tokens = 0

    def _on_policy_batch(self, x: torch.Tensor):
        """The student's continuations of ``x``'s prompts: ``(inputs, mask)``."""
        prompt = x[:, : self.prompt_length]
        length = x.shape[1] + 1 - self.prompt_length
        with self._autocast():
            seq = generate(
                self.student,
                prompt,
                length,
                temperature=self.sample_temperature,
                generator=self.sampler,
                eos_token=self.eos_token,
                pad_token=self.pad_token,
            )
        mask = mask_after_eos(seq, self.eos_token, start=self.prompt_length)
        self.generated_tokens += int(mask.sum())
        return seq[:, :-1], mask

    def step(self, batch, student_taps=None, teacher_taps=None) -> dict:
        """One optimisation step on ``batch = (inputs, targets[, index])``, ``(B, T)`` each."""
        check = self.first_batch.pending  # the first batch of each loader (kdlib.training)
        x = batch[0].to(self.device, non_blocking=True)
        y = batch[1].to(self.device, non_blocking=True)
        if check:
            _check_batch(x, y, self.teacher_cache, batch)
        mask = y >= 0
        on_policy = (
            self.mode == "on_policy"
            and self.lmbda > 0
            and float(torch.rand((), generator=self.coin)) < self.lmbda
        )
        if on_policy:
            x, mask = self._on_policy_batch(x)
        with self._autocast():  # through DDP's wrapper under torchrun: gradients stay in sync
            student_logits = logits_of(self._train_student(x)).float()
        if self.vocab_size is not None:
            student_logits = student_logits[..., : self.vocab_size]
        if check and not on_policy:
            _check_targets(y, student_logits.shape[-1])
        n = mask.sum()
        parts = {}
        if not self.teachers and self.teacher_cache is None:
            total = _masked_cross_entropy(student_logits, y, mask)
            self.student_tokens += int(n)
        else:
            student_in, teacher_in, tau = self._soft_inputs(x, student_logits, batch)
            args = dict(temperature=tau, divergence=self.divergence, beta=self.beta)
            soft = token_kd_loss(student_in, teacher_in, mask, **args, check=check)
            soft = soft * self.temperature**2
            self.teacher_tokens += int(n)
            self.student_tokens += int(n)
            if self.alpha > 0 and not on_policy:
                hard = _masked_cross_entropy(student_logits, y, mask)
            else:
                hard = torch.zeros((), device=self.device)
            total = self.alpha * hard + (1.0 - self.alpha) * soft
            parts = {"hard": hard.detach(), "soft": soft.detach()}
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.first_batch.done()
        parts["loss"] = total.detach()
        return parts

    def _soft_inputs(self, x, student_logits, batch):
        """What :func:`token_kd_loss` compares: ``(student, teacher, temperature)``."""
        if self.teacher_cache is not None:  # offline: the stored top-k, tau = 1
            index = batch[2].cpu()
            log_probs = self.teacher_cache.log_probs[index].to(self.device).float()
            indices = self.teacher_cache.indices[index].to(self.device).long()
            return student_top_k(student_logits, indices), with_tail(log_probs), 1.0
        with torch.no_grad(), self._autocast():
            teacher_logits = logits_of(self.teachers[0](x)).float()
        if self.vocab_size is not None:
            teacher_logits = teacher_logits[..., : self.vocab_size]
        if self.teacher_top_k is None:
            return student_logits, teacher_logits, self.temperature
        log_probs, indices = top_k_teacher(teacher_logits / self.temperature, self.teacher_top_k)
        student = student_top_k(student_logits / self.temperature, indices)
        return student, with_tail(log_probs), 1.0

    def fit(self, train_loader, epochs: int = 10, val_loader=None, **kwargs) -> list[dict]:
        """:meth:`kdlib.distill.Distiller.fit`; ``val_loader`` is not supported (the
        Distiller evaluates classifiers): evaluate with :func:`lm_metrics` afterwards."""
        if val_loader is not None:
            raise ValueError("SequenceDistiller.fit takes no val_loader: use lm_metrics after")
        history = super().fit(train_loader, epochs=epochs, **kwargs)
        last = history[-1]["train_loss"] if history else 0.0
        if not math.isfinite(last):
            raise ValueError(
                f"the loss of epoch {len(history)} is not finite ({last}): the student diverged "
                "(lower the learning rate)"
            )
        return history


def _masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions where ``mask`` is true (0 if none)."""
    per_token = F.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")
    return _reduce(per_token, mask, "mean")


def _check_batch(x, y, teacher_cache, batch) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.is_floating_point():
        raise ValueError(
            f"inputs must be (B, T) token ids (an integer tensor), got "
            f"{tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', type(x).__name__)}"
        )
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
        raise ValueError(
            f"targets (labels) must have the inputs' shape {tuple(x.shape)}, got "
            f"{tuple(getattr(y, 'shape', ()))}: targets[b, t] is the token after inputs[b, :t+1]"
        )
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"targets (labels) must be integer token ids, got {y.dtype}")
    if teacher_cache is not None:
        if len(batch) < 3:
            raise ValueError(
                "teacher_cache needs the loader to yield indices: "
                "next_token_loader(..., return_index=True)"
            )
        if tuple(teacher_cache.indices.shape[1:2]) != tuple(x.shape[1:2]):
            raise ValueError(
                f"teacher_cache covers sequences of {teacher_cache.indices.shape[1]} tokens, "
                f"the inputs have {x.shape[1]}"
            )


def _check_targets(y: torch.Tensor, vocab: int) -> None:
    valid = y[y >= 0]
    if valid.numel() and int(valid.max()) >= vocab:
        raise ValueError(
            f"targets (labels) contain token id {int(valid.max())}, outside the student's "
            f"vocabulary of {vocab} tokens (negative targets, such as -100, are ignored)"
        )


def from_hf_batch(
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face's causal-LM batch -> kdlib's ``(inputs, targets)``.

    Hugging Face passes ``labels`` aligned with ``input_ids`` (the model shifts them; -100 is
    ignored) and an ``attention_mask`` (0 on padding). kdlib's batches are shifted already:
    ``inputs = input_ids[:, :-1]`` and ``targets = labels[:, 1:]`` (``labels`` defaults to
    ``input_ids``), with -100 wherever the target is padding. Padding must be on the right
    (``tokenizer.padding_side = "right"``): then no attention mask is needed in the forward.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be a (B, L) tensor with L >= 2, got {input_ids!r:.80}")
    labels = input_ids if labels is None else labels
    if tuple(labels.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"labels must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
        )
    targets = labels[:, 1:].clone()
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}"
            )
        keep = attention_mask.bool()
        if bool((keep[:, 1:] & ~keep[:, :-1]).any()):
            raise ValueError(
                "attention_mask has padding before tokens (left padding): pad on the right "
                '(tokenizer.padding_side = "right")'
            )
        targets = targets.masked_fill(~keep[:, 1:], -100)
    return input_ids[:, :-1], targets


def _unused_loss(*args):  # the Distiller's `loss=`: SequenceDistiller.step computes its own
    raise RuntimeError("SequenceDistiller computes its loss in step()")


# --- data: a source with a known next-token distribution, or a text file --------------------


@dataclass
class Corpus:
    """Sentences as padded token ids.

    ``tokens``: ``(N, L)``, each row ``bos w_1 .. w_k eos pad ...``; ``mask``: ``(N, L - 1)``,
    the next-token targets that count (up to and including ``eos``); ``vocab``: the token
    strings, ``vocab[i]`` for id ``i``.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    vocab: list[str]
    pad: int
    bos: int
    eos: int

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, index) -> Corpus:
        """The rows ``index`` (a slice, indices or a boolean mask), same vocabulary."""
        return Corpus(
            self.tokens[index], self.mask[index], self.vocab, self.pad, self.bos, self.eos
        )

    def decode(self, row: torch.Tensor | Sequence[int]) -> str:
        """The words of one row, from after ``bos`` up to and including ``eos``."""
        words = []
        for i in row.tolist() if isinstance(row, torch.Tensor) else row:
            if i in (self.pad, self.bos):
                continue
            words.append(self.vocab[i])
            if i == self.eos:
                break
        return " ".join(words)


def _encode(sentences: list[list[str]], vocab: list[str], length: int) -> Corpus:
    stoi = {w: i for i, w in enumerate(vocab)}
    pad, bos, eos = stoi["<pad>"], stoi["<s>"], stoi["."]
    tokens = torch.full((len(sentences), length), pad, dtype=torch.long)
    for n, words in enumerate(sentences):
        ids = [bos] + [stoi[w] for w in words][: length - 2] + [eos]
        tokens[n, : len(ids)] = torch.tensor(ids)
    return Corpus(tokens, mask_after_eos(tokens, eos), list(vocab), pad, bos, eos)


class SentenceSource:
    """A probabilistic grammar of short English sentences whose next-token law is known exactly.

    ``the big cat near the dogs sees the birds .``: a subject (``the``/``a``, an optional
    adjective, a noun, singular or plural), an optional attractor phrase ``near the <noun>``,
    a verb that agrees in number with the *subject* (not with the nearer attractor: a
    long-range dependency), an object whose form depends on the verb, and ``.`` (the end).
    Branching points have two or more likely continuations (the verb is ``sees`` or ``likes``
    with probability 0.45 each, ``chases`` 0.1, ...). The grammar is a deterministic automaton:
    the state after a prefix is known, so :meth:`next_token_probs` gives the true distribution
    ``p(x_{t+1} | x_0..x_t)`` at every position of any sequence that follows the grammar.
    """

    nouns_sg, nouns_pl = ("cat", "dog", "bird"), ("cats", "dogs", "birds")
    noun_weights = (0.4, 0.4, 0.2)
    verbs = {"sg": ("sees", "likes", "chases"), "pl": ("see", "like", "chase")}
    verb_weights = (0.45, 0.45, 0.1)
    adjectives = ("big", "small", "young")

    def __init__(self):
        words = ["<pad>", "<s>", ".", "the", "a", *self.adjectives, *self.nouns_sg]
        words += [*self.nouns_pl, "near", *self.verbs["sg"], *self.verbs["pl"], "it", "them"]
        self.vocab = words
        self.stoi = {w: i for i, w in enumerate(words)}
        self.max_length = 12  # <s> + at most 10 words + "."

    def _nouns(self, number, total):
        out = {}
        for n, nouns in (("sg", self.nouns_sg), ("pl", self.nouns_pl)):
            share = 1.0 if number == n else (0.5 if number is None else 0.0)
            for w, p in zip(nouns, self.noun_weights):
                if share:
                    out[w] = (total * share * p, n)
        return out

    def emissions(self, state) -> dict:
        """``{word: (probability, next state)}`` in ``state``."""
        kind = state[0]
        if kind == "start":
            return {"the": (0.7, ("det", None)), "a": (0.3, ("det", "sg"))}
        if kind in ("det", "adj"):
            number = state[1]
            p_adj = 0.3 if kind == "det" else 0.0
            out = {a: (p_adj / 3, ("adj", number)) for a in self.adjectives if p_adj}
            for w, (p, n) in self._nouns(number, 1.0 - p_adj).items():
                out[w] = (p, ("subj", n))
            return out
        if kind == "subj":
            out = {"near": (0.3, ("near", state[1]))}
            for v, p in zip(self.verbs[state[1]], self.verb_weights):
                out[v] = (0.7 * p, ("verb", v))
            return out
        if kind == "near":
            return {"the": (1.0, ("pp", state[1]))}
        if kind == "pp":
            return {w: (p, ("pp_noun", state[1])) for w, (p, _) in self._nouns(None, 1.0).items()}
        if kind == "pp_noun":
            return {v: (p, ("verb", v)) for v, p in zip(self.verbs[state[1]], self.verb_weights)}
        if kind == "verb":
            lemma = state[1].rstrip("s") if state[1] != "sees" else "see"
            p_the = {"see": 0.5, "like": 0.8, "chase": 1.0}[lemma]
            out = {"the": (p_the, ("obj",))}
            if p_the < 1:
                out["it" if lemma == "see" else "them"] = (1.0 - p_the, ("end",))
            return out
        if kind == "obj":
            return {w: (p, ("end",)) for w, (p, _) in self._nouns(None, 1.0).items()}
        if kind == "end":
            return {".": (1.0, ("done",))}
        raise ValueError(f"no emissions after the end of a sentence (state {state})")

    def sample(self, n: int, seed: int = 0) -> Corpus:
        """``n`` sentences drawn from the grammar, as a :class:`Corpus` (same seed, same text)."""
        rng = torch.Generator().manual_seed(seed)
        sentences = []
        for _ in range(n):
            state, words = ("start",), []
            while state[0] != "done":
                table = self.emissions(state)
                choices = list(table)
                probs = torch.tensor([table[w][0] for w in choices])
                w = choices[int(torch.multinomial(probs, 1, generator=rng))]
                words.append(w)
                state = table[w][1]
            sentences.append(words[:-1])  # "." is added by the encoding
        return _encode(sentences, self.vocab, self.max_length)

    def next_token_probs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The true next-token distributions along ``tokens`` ``(N, L)`` (each row ``<s> ...``).

        Returns ``(probs, valid)``: ``probs`` ``(N, L - 1, V)``, the law of ``x_{t+1}`` given
        ``x_0..x_t``, and ``valid`` ``(N, L - 1)``, true where that prefix follows the grammar
        and has not ended (a row that leaves the grammar has no truth from there on).
        """
        rows = tokens.tolist()
        n, length = len(rows), len(rows[0])
        probs = torch.zeros(n, length - 1, len(self.vocab))
        valid = torch.zeros(n, length - 1, dtype=torch.bool)
        bos = self.stoi["<s>"]
        for i, row in enumerate(rows):
            if row[0] != bos:
                continue
            state = ("start",)
            for t in range(length - 1):
                table = self.emissions(state)
                for w, (p, _) in table.items():
                    probs[i, t, self.stoi[w]] = p
                valid[i, t] = True
                word = self.vocab[row[t + 1]]
                if word not in table:
                    break
                state = table[word][1]
                if state[0] == "done":
                    break
        return probs, valid

    def log_prob(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N,)`` true log-probability of each row up to its first ``.`` (``-inf`` if the row
        leaves the grammar or never ends)."""
        probs, valid = self.next_token_probs(tokens)
        p = probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)
        eos = self.stoi["."]
        mask = mask_after_eos(tokens, eos)
        ended = (tokens[:, 1:] == eos).any(1)
        logp = torch.where(mask, p.clamp_min(0).log(), torch.zeros_like(p))
        total = logp.sum(1)
        return torch.where(ended, total, torch.full_like(total, float("-inf")))


def load_text_corpus(path: str | Path, max_length: int = 16) -> Corpus:
    """A user's text file as a :class:`Corpus`: one sentence per non-empty line, words split at
    whitespace (lower-cased, a final ``.`` dropped: the encoding adds it), at most
    ``max_length - 2`` words kept. The vocabulary is the file's words. It has no known truth:
    :func:`kl_to_truth` needs a :class:`SentenceSource`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    sentences = []
    for line in lines:
        words = line.lower().replace(".", " ").split()
        if words:
            sentences.append(words)
    if not sentences:
        raise ValueError(f"{path} has no text")
    words = sorted({w for s in sentences for w in s} - {"<pad>", "<s>", "."})
    return _encode(sentences, ["<pad>", "<s>", ".", *words], max_length)


# --- measuring ------------------------------------------------------------------------------


@torch.no_grad()
def _next_token_distribution(model: nn.Module, tokens: torch.Tensor, log: bool) -> torch.Tensor:
    """The model's next-token distribution at every prefix of ``tokens`` ``(N, L)``, in eval
    mode, float32 on the CPU: ``(N, L - 1, V)`` log-probabilities (``log``) or probabilities."""
    was_training = model.training
    model.eval()
    try:
        z = logits_of(model(tokens[:, :-1].to(device_of(model)))).float()
    finally:
        model.train(was_training)
    return (F.log_softmax(z, dim=-1) if log else torch.softmax(z, dim=-1)).cpu()


def _kl_from_truth(true_probs, log_q, valid) -> float:
    """Mean over ``valid`` of ``KL(p_true || q)``; zero probabilities of the truth count 0."""
    p = true_probs
    log_p = torch.where(p > 0, p.log(), torch.zeros_like(p))
    return float(_reduce((p * (log_p - log_q)).sum(-1), valid, "mean"))


def _acceptance(p_draft, p_target, mask) -> float:
    """Mean over ``mask`` of ``sum_v min(p_draft(v), p_target(v))``."""
    return float(_reduce(torch.minimum(p_draft, p_target).sum(-1), mask.cpu(), "mean"))


@torch.no_grad()
def kl_to_truth(
    model: nn.Module, tokens: torch.Tensor, true_probs: torch.Tensor, valid: torch.Tensor
) -> float:
    """Mean over the ``valid`` positions of ``KL(p_true || p_model)`` (nats per token): how
    far the model's next-token distribution is from the source's, on these contexts. Zero
    probabilities of the truth contribute 0. ``tokens`` ``(N, L)``; ``true_probs``, ``valid``
    from :meth:`SentenceSource.next_token_probs`."""
    return _kl_from_truth(true_probs, _next_token_distribution(model, tokens, log=True), valid)


def distinct_ngrams(tokens: torch.Tensor, mask: torch.Tensor, n: int = 2) -> float:
    """Distinct ``n``-grams / all ``n``-grams among the generated targets (a diversity
    measure of samples: 1 = no ``n``-gram repeats). ``tokens`` ``(N, L)``, ``mask``
    ``(N, L - 1)`` of the generated positions."""
    grams, total = set(), 0
    for row, keep in zip(tokens[:, 1:].tolist(), mask.tolist()):
        words = [w for w, k in zip(row, keep) if k]
        for i in range(len(words) - n + 1):
            grams.add(tuple(words[i : i + n]))
            total += 1
    return len(grams) / max(total, 1)


@torch.no_grad()
def acceptance_rate(
    draft: nn.Module, target: nn.Module, tokens: torch.Tensor, mask: torch.Tensor
) -> float:
    """Speculative decoding's per-token acceptance rate of ``draft`` proposing for ``target``.

    In speculative sampling (Leviathan, Kalman & Matias, "Fast Inference from Transformers via
    Speculative Decoding", ICML 2023, arXiv:2211.17192; Chen et al. 2023, arXiv:2302.01318) a
    small draft model proposes tokens that the large target model verifies in one pass; a
    proposed token is kept with probability ``min(1, p_T / p_S)``, which keeps the target's
    distribution exactly. At a context the chance of acceptance is
    ``alpha = sum_v min(p_T(v), p_S(v)) = 1 - TV(p_T, p_S)``: a student distilled closer to its
    teacher drafts better. Returned: the exact ``alpha`` (a sum over the vocabulary, not a
    simulation) averaged over the positions of ``tokens`` ``(N, L)`` where ``mask``
    ``(N, L - 1)`` is true. With ``gamma`` tokens drafted per target pass and acceptances
    independent, each pass yields ``(1 - alpha^(gamma + 1)) / (1 - alpha)`` tokens on average.
    """
    p = [_next_token_distribution(model, tokens, log=False) for model in (draft, target)]
    return _acceptance(p[0], p[1], mask)


@torch.no_grad()
def lm_reference(
    test: Corpus, source: SentenceSource | None = None, teacher: nn.Module | None = None
) -> dict:
    """What :func:`lm_metrics` compares every model with on ``test``, computed once for many
    models: the source's true next-token distributions (``truth``: ``(probs, valid)`` of
    :meth:`SentenceSource.next_token_probs`) and the teacher's (``teacher_probs``,
    ``(N, L - 1, V)``, eval mode, float32 on the CPU)."""
    out = {}
    if source is not None:
        out["truth"] = source.next_token_probs(test.tokens)
    if teacher is not None:
        out["teacher_probs"] = _next_token_distribution(teacher, test.tokens, log=False)
    return out


@torch.no_grad()
def lm_metrics(
    model: nn.Module,
    test: Corpus,
    source: SentenceSource | None = None,
    teacher: nn.Module | None = None,
    n_samples: int = 200,
    seed: int = 0,
    reference: dict | None = None,
) -> dict:
    """What the notebook reports for a language model.

    On ``test`` (held-out text): ``nll`` (nats per token), ``perplexity``, and with a ``source``
    ``kl_truth`` (:func:`kl_to_truth`); with a ``teacher``, ``agreement`` (share of test
    positions where the two models' most likely next tokens agree) and ``acceptance`` (the
    draft acceptance rate of speculative decoding, :func:`acceptance_rate`). On ``n_samples``
    sentences the model generates from ``<s>`` (temperature 1): ``distinct2``
    (:func:`distinct_ngrams`), and with a ``source`` ``invalid`` (share of samples the grammar
    cannot produce: the student's own text, where the KL to the truth is infinite).
    ``samples``: those sentences. ``reference``: :func:`lm_reference` of the same ``test``,
    ``source`` and ``teacher``, computed once when many models are measured (default: computed
    here).
    """
    if reference is None:
        reference = lm_reference(test, source, teacher)
    device = device_of(model)
    log_q = _next_token_distribution(model, test.tokens, log=True)  # one pass for every metric
    mask = test.mask.cpu()
    lp = log_q.gather(-1, test.tokens[:, 1:, None].cpu()).squeeze(-1)
    nll = -float(_reduce(lp, mask, "mean"))
    out = dict(nll=nll, perplexity=math.exp(nll))
    if source is not None:
        true_probs, valid = reference["truth"]
        out["kl_truth"] = _kl_from_truth(true_probs, log_q, valid)
    if teacher is not None:
        p_t = reference["teacher_probs"]
        agree = log_q.argmax(-1) == p_t.argmax(-1)
        out["agreement"] = float(agree[mask].float().mean())
        out["acceptance"] = _acceptance(log_q.exp(), p_t, mask)
    gen = torch.Generator(device=device).manual_seed(seed)
    prompt = torch.full((n_samples, 1), test.bos, dtype=torch.long)
    length = test.tokens.shape[1] - 1
    samples = generate(
        model, prompt, length, generator=gen, eos_token=test.eos, pad_token=test.pad
    ).cpu()
    sample_mask = mask_after_eos(samples, test.eos)
    out["distinct2"] = distinct_ngrams(samples, sample_mask, 2)
    if source is not None:
        out["invalid"] = 1.0 - float(torch.isfinite(source.log_prob(samples)).float().mean())
    out["samples"] = samples
    return out
