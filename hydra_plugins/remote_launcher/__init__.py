"""Hydra face of hydra-remote-launcher: config schemas, launchers and the paired sweeper.

Kept light on purpose: Hydra imports every module under ``hydra_plugins`` at start-up to
discover plugins, so everything heavy is imported inside the methods that need it.
"""
