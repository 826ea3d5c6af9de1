"""Figure 1 of Adilova, Rosenzweig, Kamp: iid split, never synced. The
average of the two workers is formed and measured at every eval point but
never sent back.

    python -m experiments.run --config=fig1 --cifar_dir=DIR --out=runs/fig1
    python -m experiments.reproduce --preset=paper --cifar_dir=DIR   # all four

Paper: the local models pass 75% training accuracy, the final average
reaches only 36% on each local dataset, and its I(Z;Y) collapses after
10-50 aggregations.
Ours at full size (docs/reproduction.md, "Claim by claim"; the four figures
at full size, 3 seeds): locals 77.7% / 77.3%, average 54.9% / 54.8% (the
sensitivity study's run of the same setting, on 2,000 local samples: 78.6%
/ 56.4%; "Claim by claim" says why they differ); no collapse of I(Z;Y) as EDGE
reads it (2.59 against 2.70 bits at the end), while the head's
Barber-Agakov bound falls (1.47 against 2.43 bits). PyTorch's
tutorial setup (--init=torch --input_scale=symmetric --momentum=0.9) at
lr 0.01: 80.1% / 51.1%; at lr 0.02: 67.4% / 38.0% (the sensitivity study
at full size). Quick preset (digits, lr 0.25, seed 0): fig 1 locals 0.97,
average 0.92, loss barrier 0.13-0.17 nats; in a 3-seed sweep (seeds 0-2)
the average ends 5 to 14 points below its locals. With 5 seeds that is not
"far below" by the claim rule (loss share 0.128 ± 0.054 over the 4 judged
seeds, against 0.3), and seed 3 is not judged: its worker0 never learns
(0.17 on its own data) (docs/reproduction.md, "The claim rules").
"""

from experiments.configs import common
from fedjax_mi.config import RunConfig


def get_config(preset: str = "paper") -> RunConfig:
    return common.base(preset).replace(split="iid", protocol="nosync", sync_period=None)
