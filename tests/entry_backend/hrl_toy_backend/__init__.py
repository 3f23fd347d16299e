"""A backend of another package, found through the ``hydra_remote_launcher.backends`` entry point.

It stands for a real third-party backend in the tests: ``hrl_toy_backend-0.1.dist-info`` next to
this package declares the entry point, so putting ``tests/entry_backend`` on ``sys.path`` (or
``PYTHONPATH``) "installs" it. Each job runs DETACHED as its own process group: the job-side
worker (``python -m launcher_core.runtime.worker``) under a small ``sh`` that records its exit
code. ``remote_dir`` stands for another machine: jobs write their output dirs there, ``fetch``
copies them into the local output dirs, ``clean`` deletes them. The code is the launching
machine's own (its frozen snapshot), as on a shared file system.

* :mod:`.settings`: ``hydra.launcher`` of ``hydra/launcher=toy``, validated;
* :mod:`.backend`: the :class:`launcher_core.backends.base.Backend`;
* :mod:`.descriptor`: what the registry knows of it.

Its Hydra face is ``hydra_plugins/hrl_toy_launcher`` beside this package.
"""
