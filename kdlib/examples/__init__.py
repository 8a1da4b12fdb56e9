"""Runnable examples: ``python -m kdlib.examples.<name>``.

- ``ddp``: distillation on the digits with several processes under ``torchrun``
  (``torchrun --nproc_per_node 2 -m kdlib.examples.ddp``).
"""
