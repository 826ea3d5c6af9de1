"""The paper's settings and the studies' settings, as Python: the one source
of truth for them. Each figure module's `get_config(preset)` returns the
`fedjax_mi.config.RunConfig` of that experiment; its docstring gives the
command and the numbers to expect.

    python -m experiments.run --config=fig1 --cifar_dir=DIR --out=runs/fig1
    python -m experiments.run --config=fig1:quick --out=runs/fig1_quick

Flags given with `--config` override the config's settings.
"""

import importlib

from fedjax_mi.config import ConfigError, RunConfig

NAMES = ("fig1", "fig2", "fig3", "fig4", "protocols_dynamic", "protocols_triggered")


def load(spec: str) -> RunConfig:
    """'fig1' or 'fig1:quick' (the argument of the module's get_config)."""
    name, _, arg = spec.partition(":")
    if name not in NAMES:
        raise ConfigError("config", f"unknown config {name!r}; choose from {NAMES}")
    module = importlib.import_module(f"experiments.configs.{name}")
    return module.get_config(arg) if arg else module.get_config()
