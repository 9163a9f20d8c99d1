"""``miss-bench``: the load harness of MiSS (README, "Benchmarks").

Modules, one job each: ``cli`` (the command line), ``runner`` (one run:
population, servers, measured phases), ``scenarios/`` (one module per
scenario), ``harness`` (hub, relay and service processes, CPU pinning),
``relay`` (the bare relay baseline), ``pool`` and ``loadgen`` (the load
generator worker processes), ``client`` (one simulated device),
``provision`` (invitations through the Store), ``measure`` (``/proc``),
``stats`` (HDR histograms, time series), ``report`` (table, JSON, PNG),
``progress`` (progress display), ``plan`` (what the workers are told).
"""
