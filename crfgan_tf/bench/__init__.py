"""Benchmarks (measured by tools, recorded in docs/benchmarks.md; not tests).

  runner      one measurement in a fresh process, out-of-memory as a result
  training    speed and peak memory of training iterations (tools.profile_memory)
  pipeline    conversion, input stream, generation and feature-extraction costs
  deviations  the effect of each deviation from the reference's training semantics
  device      the GPU figures (training, generation) beside the memory planner's
"""
