"""Core of hydra-remote-launcher: job model, sweep expansion, state store, backends.

Nothing here imports Hydra at module import time except where a function needs it, so the
Hydra plugin modules that import this package stay cheap during plugin discovery.
"""

__version__ = "0.1.0"
