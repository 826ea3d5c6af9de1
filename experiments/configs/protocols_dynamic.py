"""One run of the protocol study at full size: dynamic averaging on the
paper's iid setting, the middle of the study's three deltas. Every 50
local steps each worker checks ||w - r||^2 <= 5.6 against the last average
r; any violation syncs all (docs/protocols.md).

    python -m experiments.run --config=protocols_dynamic --cifar_dir=DIR --out=runs/dynamic

Not yet run at full size (about 30 h on a 2-core CPU); the digits study's
numbers are in docs/protocols.md.
"""

from experiments.configs import protocols
from fedjax_mi.config import RunConfig


def get_config() -> RunConfig:
    return protocols.base("protocols").replace(
        split="iid", protocol="dynamic", check_every=50, delta=5.6
    )
