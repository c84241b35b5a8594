"""Shared facts, without TensorFlow: the lowest layer (docs/architecture.md).

  geometry    supported sizes, how the networks grow with the size, embedding, crop and
              slab sides, crop positions, the feature side, block means
  intensity   the CT and lung windows, [-1, 1] <-> intensities, the int16 storage scale,
              slices of canonical volumes, PNG rendering
"""
