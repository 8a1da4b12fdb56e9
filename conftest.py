"""pytest settings for the whole repository (tests/ and the nbval run over solutions/).

Notebooks run in fast mode under test (their `parameters` cell reads KDLIB_FAST), plots go to
a non-interactive backend, and progress bars stay quiet. Kernels started by papermill, nbval
and nbgrader inherit these variables.
"""

import os

os.environ.setdefault("KDLIB_FAST", "1")
os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("KDLIB_PROGRESS", "0")
# Tiny models gain nothing from several threads, and on a busy machine OpenMP threads waiting for
# each other slow training several-fold: one thread per process under test.
os.environ.setdefault("OMP_NUM_THREADS", "1")
