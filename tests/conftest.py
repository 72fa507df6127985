"""Test-wide settings: offline, quiet, and one torch thread per worker when tests run in parallel."""

from __future__ import annotations

import os

# Nothing in the tests may reach a model hub; real models load from local package folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Under pytest-xdist each worker is its own process: with N workers on N cores, one torch thread
# each avoids oversubscription (which makes every model call several times slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("RAGKIT_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
