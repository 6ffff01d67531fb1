"""``python -m workers``: the same as ``hpo worker``."""

import sys

from service.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
