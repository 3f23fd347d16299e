"""Pipelines: stages of Hydra multiruns with dependencies between them (``launcher-core pipeline``).

A pipeline file (YAML) names stages; each is a Hydra multirun of an app (its overrides, paired
groups and cluster preset) that ``needs`` other stages. A stage override may hold
``${stage:NAME,output_dir}`` (the matched upstream job's output dir) or ``${stage:NAME,sweep_dir}``.
The runner resolves these itself, per job, before it launches a stage: a downstream job is matched
with the one upstream job that has the same values of the keys both stages sweep (or ``match``),
or needs the whole upstream stage when they share none. The app only ever sees literal paths.

The modules, each depending only on those before it:

* :mod:`~launcher_core.pipeline.model`: stages, planned jobs, the pipeline's dirs;
* :mod:`~launcher_core.pipeline.matching`: which upstream jobs each job needs;
* :mod:`~launcher_core.pipeline.spec`: reading the file and planning each stage's jobs
  (:func:`~launcher_core.pipeline.spec.load_pipeline`);
* :mod:`~launcher_core.pipeline.placement`: where a stage runs (what is particular to a backend);
* :mod:`~launcher_core.pipeline.state`: the pipeline's state file, its run lock, job states;
* :mod:`~launcher_core.pipeline.schedule`: which jobs are ready, waiting or blocked; what to launch;
* :mod:`~launcher_core.pipeline.launch`: a stage launch's command line and jobs file;
* :mod:`~launcher_core.pipeline.runner`: the launch / pull / wait loop;
* :mod:`~launcher_core.pipeline.cli`: ``launcher-core pipeline run|status|cancel``.

This package's ``__init__`` imports nothing: import what you use from its modules.
"""
