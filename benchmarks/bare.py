"""``python -m benchmarks.bare CONFIGS.json INDEX COUNT EPOCHS``: the bare side of the scaling
benchmark. Fits every COUNT-th configuration of the file from INDEX on, on `digits`, with
nothing around ``model.fit`` (one TensorFlow thread, as a worker's trainer). Prints
``ready`` once TensorFlow, the data and a warm-up fit are done, then waits for a line on
stdin, so that every process of a round starts training at the same moment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import pin_tensorflow, quiet_tensorflow


def main(argv: list[str]) -> int:
    path, index, count, epochs = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    quiet_tensorflow()
    pin_tensorflow(1)
    from benchmarks.overhead import bare_fit
    from tests.support import trial_lease
    from workers.data import load

    data = load("digits")
    configs = json.loads(path.read_text())

    bare_fit(trial_lease(configs[0], 1), data)  # warm: TensorFlow's first trace is not a trial's
    print("ready", flush=True)
    sys.stdin.readline()
    for params in configs[index::count]:
        bare_fit(trial_lease(params, epochs), data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
