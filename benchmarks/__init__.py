"""Benchmarks of the service against bare Keras, plain Optuna and KerasTuner.

``make bench`` runs them all (``python -m benchmarks``) and writes ``RESULTS.md``; each also
runs alone, ``python -m benchmarks.<name> --size smoke|full``.
"""
