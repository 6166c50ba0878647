"""Small, self-contained optimizer demos (CPU-sized), each runnable as a module.

* ``python -m experiments.demos.egn_demo [--smoke] [--out DIR]``: EGN vs tuned Adam and SGD on
  a synthetic regression task and on scikit-learn's bundled digits (offline).
* ``python -m experiments.demos.ringmaster_demo [--smoke] [--out DIR]``: Ringmaster LMO (tuned
  threshold and parameter-agnostic) vs the papers' baselines, Rennala SGD and delay-adaptive
  asynchronous SGD, on a noisy quadratic across worker-heterogeneity levels, in simulated
  wall-clock time, with per-worker counts of applied gradients.
* ``python -m experiments.demos.ef_counterexample [--out DIR]``: the error-feedback Muon
  paper's counterexample: exact-polar Muon stalls, EF-Muon converges.

Each writes ``results.json`` and PNG plots (labelled axes) under ``--out``.
"""
