"""Tokenomics: what a pipeline costs to run (money, time, energy, CO2) and what a model needs (xPU sizing).

* :mod:`ragkit.tokenomics.costs`: per-stage and per-run TTFT, TPOT, latency, throughput and tokens;
  cost per million tokens from a hardware price per hour, API price comparisons, hidden costs.
* :mod:`ragkit.tokenomics.carbon`: energy and CO2 of a run through codecarbon in offline mode, each
  figure marked ``measured`` or ``estimated``.
* :mod:`ragkit.tokenomics.plan`: memory, accelerator cards, training compute and carbon of a model plan
  (the ``ragkit plan`` command).

Nothing here imports a heavy package at import time.
"""
