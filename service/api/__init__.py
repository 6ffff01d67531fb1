"""The HTTP edge: the FastAPI app, its routes, the request and response schemas, auth,
body limits, idempotency and metrics.

May import: ``service.domain``, ``service.storage`` and the shared modules (``config``,
``errors``, ``states``, ``protocol``, ``logs``), ``search_space``. Not the CLI. This
package's ``__init__`` imports nothing, so ``service.api.schemas`` can be read by the
client without loading FastAPI's app.
"""
