"""Training: the loop and what runs around it.

  loop           train(config): the order of events of a run
  distribute     strategies, which process writes, how a step is traced, the workers'
                 agreement on a stop step
  checkpointing  what a checkpoint holds, restoring the newest readable one
  summaries      the progress line, TensorBoard scalars and images
  monitor        the in-training evaluation (`eval_every`): eval.jsonl, alarms, the best
                 checkpoint
  memory_plan    the memory a training step needs, before it runs
"""
