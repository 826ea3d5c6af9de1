"""One run of the protocol study at full size: measurement-triggered sync
(the paper's proposal) on the paper's non-iid setting (classes 0-4 / 5-9).
At every eval point (100 steps) the host compares the average's accuracy
on the local datasets with the local models' own; below 0.8 x theirs, the
next step syncs. Each decision costs 2K models: the average must reach the
workers' data to be measured (docs/protocols.md).

    python -m experiments.run --config=protocols_triggered --cifar_dir=DIR --out=runs/triggered

Not yet run at full size (about 30 h on a 2-core CPU); the digits study's
numbers are in docs/protocols.md.
"""

from experiments.configs import protocols
from fedjax_mi.config import RunConfig


def get_config() -> RunConfig:
    return protocols.base("protocols").replace(
        split="classes", protocol="triggered", trigger_metric="acc", trigger_ratio=0.8
    )
