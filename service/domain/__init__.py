"""The domain: studies, the trial protocol (leases), jobs (sanity runs and final models),
data sets, and the workers seen. The rules live here, over plain typed values.

May import: ``service.storage``, the shared modules (``config``, ``errors``, ``states``,
``protocol``, ``logs``) and ``search_space``. Never FastAPI, ``service.api`` (its
request models) or ``service.cli``.
"""
