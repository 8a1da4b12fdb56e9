"""Memory and time of the per-token distillation losses at real vocabularies, and generation
with a KV cache.

    python -m benchmarks.lm_memory                      # V = 32,000 and 128,256, minutes
    python -m benchmarks.lm_memory --vocab 32000 --tokens 128 --repeats 1   # seconds

**Losses.** Synthetic heads: a student and a teacher with hidden size ``--hidden`` and random
output layers of ``V`` rows, ``--tokens`` tokens. For each divergence, ``full`` is
``token_kd_loss(h_S @ W_S.T, h_T @ W_T.T)`` (the logits materialised, as a training loop does)
and ``chunked`` is :func:`kdlib.lm.chunked_token_kd_loss` with ``--chunk`` tokens per chunk; both
run forward and backward. Each is measured in a fresh process: the peak resident memory during
forward + backward above what the process held just before (``ru_maxrss``), stated in units of
one ``tokens x V`` float32 tensor and of one ``chunk x V`` one, and the median time of
``--repeats`` runs. The two must give the same value (checked).

**Generation.** A TinyGPT (``context`` 128, width 128, 4 layers) writes 127 tokens for 16
prompts with :func:`kdlib.lm.generate`, with and without its KV cache: the time ratio, and
whether the samples are the same.

One torch thread. The JSON (``--out``) holds every figure and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdlib import lm
from kdlib.models import TinyGPT

DIVERGENCES = ("forward", "reverse", "jsd")


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _child(
    vocab: int, tokens: int, hidden: int, chunk: int, method: str, divergence: str, repeats: int
) -> dict:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(1, tokens, hidden, generator=g)
    h_t = torch.randn(1, tokens, hidden, generator=g)
    w_s = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).requires_grad_(True)
    w_t = torch.randn(vocab, hidden, generator=g) / hidden**0.5
    h_s.requires_grad_(True)

    def run():
        if method == "full":
            value = lm.token_kd_loss(h_s @ w_s.T, h_t @ w_t.T, divergence=divergence)
        else:
            value = lm.chunked_token_kd_loss(
                h_s, w_s, h_t, w_t, divergence=divergence, chunk_size=chunk
            )
        value.backward()
        h_s.grad = w_s.grad = None
        return value.item()

    # warm-up on 2 tokens: the libraries' one-time allocations are not the loss's
    small = dict(h_s=h_s, h_t=h_t)
    h_s, h_t = h_s[:, :2].detach().requires_grad_(True), h_t[:, :2]
    run()
    h_s, h_t = small["h_s"], small["h_t"]
    before = _rss_kib()
    value = run()
    peak = _rss_kib() - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return dict(value=value, peak_bytes=peak * 1024, seconds=statistics.median(times))


def losses(args) -> list[dict]:
    rows = []
    for vocab in args.vocab:
        for divergence in DIVERGENCES:
            out = {}
            for method in ("full", "chunked"):
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.lm_memory",
                    "--child",
                    json.dumps(
                        [
                            vocab,
                            args.tokens,
                            args.hidden,
                            args.chunk,
                            method,
                            divergence,
                            args.repeats,
                        ]
                    ),
                ]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                out[method] = json.loads(done.stdout.strip().splitlines()[-1])
            one = 4 * args.tokens * vocab
            one_chunk = 4 * min(args.chunk, args.tokens) * vocab
            row = dict(
                vocab=vocab,
                divergence=divergence,
                tokens=args.tokens,
                chunk=args.chunk,
                one_tensor_bytes=one,
                one_chunk_bytes=one_chunk,
                same_value=abs(out["full"]["value"] - out["chunked"]["value"])
                <= 1e-5 * max(1.0, abs(out["full"]["value"])),
            )
            for method, m in out.items():
                row[f"{method}_peak_bytes"] = m["peak_bytes"]
                row[f"{method}_peak_tensors"] = m["peak_bytes"] / one
                row[f"{method}_peak_chunks"] = m["peak_bytes"] / one_chunk
                row[f"{method}_seconds"] = m["seconds"]
            row["time_ratio_chunked_to_full"] = out["chunked"]["seconds"] / out["full"]["seconds"]
            rows.append(row)
            print(
                f"V={vocab:>7,} {divergence:8s} full: {row['full_peak_bytes'] / 2**20:8.0f} MiB"
                f" ({row['full_peak_tensors']:.1f} x N*V) {row['full_seconds']:.2f} s;"
                f"  chunked: {row['chunked_peak_bytes'] / 2**20:7.0f} MiB"
                f" ({row['chunked_peak_tensors']:.2f} x N*V, {row['chunked_peak_chunks']:.1f} x"
                f" chunk*V) {row['chunked_seconds']:.2f} s; same value: {row['same_value']}",
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
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(*json.loads(args.child))))
        return
    result = dict(
        args={k: v for k, v in vars(args).items() if k not in ("child", "out")},
        load_before=os.getloadavg(),
        losses=losses(args),
        kv_cache=kv_cache(args.repeats),
        load_after=os.getloadavg(),
    )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
