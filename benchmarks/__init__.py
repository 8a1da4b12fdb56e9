"""Benchmarks of kdlib against plain PyTorch (run from the repository root).

python -m benchmarks.distill --workload all      # see benchmarks/README.md
"""
