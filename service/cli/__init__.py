"""The ``hpo`` command. The user commands (submit, status, trials, best, stop, ...) are a
thin layer over :class:`service.client.Client`; the server commands (migrate, api,
worker, up) start the parts.

May import anything below it: ``service.client``, ``service.api`` (to serve it),
``service.storage`` (to migrate), ``workers``.
"""

from service.cli.main import main

__all__ = ["main"]
