"""Storage: the database engine (``engine``), the service's tables (``tables``), the
Optuna adapter (``optuna_adapter``, Optuna's storage and samplers in the same database),
the process's ``runtime`` and the migrations runner (``migrate``).

May import: the shared modules (``config``, ``errors``, ``states``, ``logs``) and
``search_space``. Nothing above it: not ``domain``, ``api`` or ``cli``.
"""
