"""hpo-service: a hyperparameter search service for Keras models.

The package is layered; each arrow points down only (``tests/test_layers.py`` walks the
imports and fails on any other)::

    cli/ ──────▶ client ──HTTP──▶ api/ ──▶ domain/ ──▶ storage/
     (hpo)        (Python)         (FastAPI)  (rules)     (SQL, Optuna)

- ``api/``: the HTTP edge: the app, routes, request/response schemas, auth, body limits,
  idempotency, metrics. The only place FastAPI is imported.
- ``domain/``: studies, leases, jobs, data sets, workers: the rules, over plain typed
  values. Never imports FastAPI, pydantic request models or the CLI.
- ``storage/``: the engine, the tables, the Optuna adapter, the runtime (one per process)
  and the migrations runner.
- ``cli/``: the ``hpo`` command, a thin layer over :mod:`service.client` (and, for the
  server commands, over ``api``, ``storage`` and ``workers``).

Beside the layers, small modules every layer (and the workers) may import: ``config``
(settings), ``errors`` (domain errors), ``states`` (state names), ``protocol`` (the trial
protocol's wire bodies, free of TensorFlow) and ``logs``. ``client`` (the public Python
client) sits at the top, beside the CLI: it speaks HTTP to ``api`` and reads its schemas.
"""
