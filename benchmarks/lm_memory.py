"""Memory and time of the per-token distillation losses at real vocabularies, and generation
with a KV cache.

    python -m benchmarks.lm_memory                      # V = 32,000 and 128,256, minutes
    python -m benchmarks.lm_memory --vocab 32000 --tokens 128 --repeats 1   # seconds

**Losses.** Synthetic heads: a student and a teacher with hidden size ``--hidden`` and random
output layers of ``V`` rows, ``--tokens`` tokens. For each divergence, ``full`` is
``token_kd_loss(h_S @ W_S.T, h_T @ W_T.T)`` (the logits materialised, as a training loop does)
and ``chunked`` is :func:`kdlib.lm.chunked_token_kd_loss` with ``--chunk`` tokens per chunk and
``--vocab-chunk`` columns per block; both run forward and backward. The peak memory is that of
the tensors created during forward + backward and alive at the same time
(:class:`TensorMemory`: every tensor storage an operator allocates, counted until its last
tensor is freed), stated in bytes, in units of one ``tokens x V`` float32 tensor and of one
``chunk x V`` one; the gradients of the hidden states and the head, which both methods return,
are part of it and are given apart. The time is the median of ``--repeats`` runs (without the
accounting). The two must give the same value and gradients (checked).

**Generation.** A TinyGPT (``context`` 128, width 128, 4 layers) writes 127 tokens for 16
prompts with :func:`kdlib.lm.generate`, with and without its KV cache: the time ratio, and
whether the samples are the same.

One torch thread. The JSON (``--out``) holds every figure and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kdlib import lm
from kdlib.models import TinyGPT


class TensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage allocated inside the ``with`` block and alive at once.

    Every operator call passes through :meth:`__torch_dispatch__` (forward and backward alike);
    a storage that an output owns and no input shares is new, and counts from then on until
    the last tensor that holds it is freed (a weak-reference finalizer per tensor: autograd
    keeps the tensors it saves alive, so saved activations count while the graph holds them).
    Views and in-place results add no bytes; storages that existed before the block (the
    inputs) are not counted. ``peak`` and ``current`` are in bytes. On the CPU this sees what
    the allocator is asked for, not what the C library keeps from the operating system (the
    resident size), so it is exact and repeatable where ``ru_maxrss`` is neither.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors holding it]
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                del self.live[key]
                self.current -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        shared = {t.untyped_storage().data_ptr() for t in given}
        seen = set()
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in seen or any(t is g for g in given):
                continue  # not a tensor, a repeat, or an in-place result (the input itself)
            seen.add(id(t))
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or (key in shared and key not in self.live):
                continue  # empty, or a view of a storage from before the block
            if key in self.live:
                self.live[key][1] += 1
            else:
                self.live[key] = [storage.nbytes(), 1]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, key)
        return out


DIVERGENCES = ("forward", "reverse", "jsd")


def _inputs(vocab: int, tokens: int, hidden: int):
    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(1, tokens, hidden, generator=g)
    h_t = torch.randn(1, tokens, hidden, generator=g)
    w_s = torch.randn(vocab, hidden, generator=g) / hidden**0.5
    w_t = torch.randn(vocab, hidden, generator=g) / hidden**0.5
    return h_s.requires_grad_(True), w_s.requires_grad_(True), h_t, w_t


def run_loss(method: str, divergence: str, inputs, chunk: int, vocab_chunk: int):
    """Forward and backward of one method: ``(value, grad of h_S, grad of W_S)``."""
    h, w, h_t, w_t = inputs
    h.grad = w.grad = None
    if method == "full":
        value = lm.token_kd_loss(h @ w.T, h_t @ w_t.T, divergence=divergence)
    else:
        value = lm.chunked_token_kd_loss(
            h, w, h_t, w_t, divergence=divergence, chunk_size=chunk, vocab_chunk_size=vocab_chunk
        )
    value.backward()
    return value.detach(), h.grad, w.grad


def peak_bytes(method: str, divergence: str, inputs, chunk: int, vocab_chunk: int) -> int:
    """:class:`TensorMemory`'s peak over one forward and backward."""
    with TensorMemory() as memory:
        run_loss(method, divergence, inputs, chunk, vocab_chunk)
    return memory.peak


def losses(args) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for vocab in args.vocab:
        inputs = _inputs(vocab, args.tokens, args.hidden)
        one = 4 * args.tokens * vocab
        one_chunk = 4 * min(args.chunk, args.tokens) * vocab
        grads = 4 * (args.tokens + vocab) * args.hidden  # the two gradients both methods return
        for divergence in DIVERGENCES:
            row = dict(
                vocab=vocab,
                divergence=divergence,
                tokens=args.tokens,
                chunk=args.chunk,
                vocab_chunk=args.vocab_chunk,
                one_tensor_bytes=one,
                one_chunk_bytes=one_chunk,
                gradient_bytes=grads,
            )
            results = {}
            for method in ("full", "chunked"):
                results[method] = run_loss(method, divergence, inputs, args.chunk, args.vocab_chunk)
                peak = peak_bytes(method, divergence, inputs, args.chunk, args.vocab_chunk)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    run_loss(method, divergence, inputs, args.chunk, args.vocab_chunk)
                    times.append(time.perf_counter() - start)
                row[f"{method}_peak_bytes"] = peak
                row[f"{method}_peak_tensors"] = peak / one
                row[f"{method}_peak_chunks"] = peak / one_chunk
                row[f"{method}_peak_chunks_beyond_gradients"] = (peak - grads) / one_chunk
                row[f"{method}_seconds"] = statistics.median(times)
            row["same_value_and_gradients"] = all(
                torch.allclose(a, b, rtol=1e-4, atol=1e-7)
                for a, b in zip(results["full"], results["chunked"])
            )
            row["time_ratio_chunked_to_full"] = row["chunked_seconds"] / row["full_seconds"]
            rows.append(row)
            print(
                f"V={vocab:>7,} {divergence:8s} full: {row['full_peak_bytes'] / 2**20:6.0f} MiB"
                f" ({row['full_peak_tensors']:.1f} x N*V) {row['full_seconds']:.2f} s;"
                f"  chunked: {row['chunked_peak_bytes'] / 2**20:5.0f} MiB"
                f" ({row['chunked_peak_tensors']:.2f} x N*V, {row['chunked_peak_chunks']:.2f} x"
                f" chunk*V, {row['chunked_peak_chunks_beyond_gradients']:.2f} beyond the"
                f" gradients) {row['chunked_seconds']:.2f} s;"
                f" same value and gradients: {row['same_value_and_gradients']}",
                flush=True,
            )
    return rows


def kv_cache(repeats: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyGPT(1000, context=128, d_model=128, n_layers=4, n_heads=4).eval()
    prompt = torch.randint(0, 1000, (16, 1))
    times, samples = {}, {}
    for _ in range(repeats):
        for use_cache in (False, True):
            start = time.perf_counter()
            samples[use_cache] = lm.generate(
                model,
                prompt,
                127,
                generator=torch.Generator().manual_seed(1),
                use_cache=use_cache,
            )
            times.setdefault(use_cache, []).append(time.perf_counter() - start)
    out = dict(
        seconds_without_cache=statistics.median(times[False]),
        seconds_with_cache=statistics.median(times[True]),
        same_samples=bool(torch.equal(samples[False], samples[True])),
    )
    out["speedup"] = out["seconds_without_cache"] / out["seconds_with_cache"]
    print(
        f"generate 127 tokens x 16 (TinyGPT 128 wide, 4 layers): without cache "
        f"{out['seconds_without_cache']:.2f} s, with {out['seconds_with_cache']:.2f} s: "
        f"{out['speedup']:.1f}x; the same samples: {out['same_samples']}"
    )
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_000, 128_256])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--vocab-chunk", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = dict(
        args={k: v for k, v in vars(args).items() if k != "out"},
        load_before=os.getloadavg(),
        losses=losses(args),
        kv_cache=kv_cache(args.repeats),
        load_after=os.getloadavg(),
    )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
