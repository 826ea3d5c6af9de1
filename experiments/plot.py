"""Figures of a finished (or running) experiment from its metrics.jsonl alone.

    python -m experiments.plot OUT [OUT ...]

Writes OUT/figures/{mi,accuracy,info_plane}.png.
"""

import os
import sys

from absl import app

from fedjax_mi import plotting


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("usage: python -m experiments.plot OUT [OUT ...]")
    for run_dir in argv[1:]:
        try:
            paths = plotting.plot_run(run_dir, title=os.path.basename(os.path.normpath(run_dir)))
        except (OSError, ValueError) as e:
            print(f"error: {run_dir}: {e}", file=sys.stderr)
            sys.exit(2)
        for path in paths:
            print(path)


if __name__ == "__main__":
    app.run(main)
