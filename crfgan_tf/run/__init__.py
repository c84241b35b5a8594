"""The run contract: what a training run is, on disk and in code.

  config      TrainConfig: every training setting, its default, its validation and the
              rules of resuming (TrainConfig.resolve)
  rundir      the run directory's layout and files, the config-never-changes rule
  factory     the one factory from a config to a model (build_model) or some of its
              networks (build_networks): training, export, the reference import, the
              planner and the benchmarks all build through it
"""
