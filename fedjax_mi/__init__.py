"""fedjax_mi: federated averaging with mutual-information measurements in JAX."""

__version__ = "0.1.0"
