"""``python -m service.cli``: the same as ``hpo``."""

import sys

from service.cli.main import main

sys.exit(main())
