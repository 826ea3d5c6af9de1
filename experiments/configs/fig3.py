"""Figure 3 of Adilova, Rosenzweig, Kamp: non-iid split (worker 0 holds
classes 0-4, worker 1 classes 5-9), never synced, measured every 100 steps.

    python -m experiments.run --config=fig3 --cifar_dir=DIR --out=runs/fig3

Paper: the average's I(Z;Y) falls from the start towards 0.
Ours at full size (3 seeds, docs/reproduction.md, "Claim by claim"): it
falls below the locals' (1.27 against 1.62 bits at the end), not towards 0
(reference EDGE's floor with shuffled labels on the 5-class halves is 0.68
bits: docs/estimators.md, table "On the trained CIFAR-10 LeNets", rows "3
(classes, no-sync)", one seed).
"""

from experiments.configs import common
from fedjax_mi.config import RunConfig


def get_config(preset: str = "paper") -> RunConfig:
    return common.base(preset).replace(split="classes", protocol="nosync", sync_period=None)
