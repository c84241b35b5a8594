"""Data: scans -> preprocessing -> sharded TFRecords with a manifest -> the training stream.

  preprocess  one scan to a canonical [-1, 1] volume (no TensorFlow)
  records     the record schema (SCHEMA), reading, counting and checking records
  manifest    manifest.json beside the shards
  convert     the resumable conversion of an archive
  pipeline    the training input stream
  labels      class labels (CSV, LUNA16 annotations)
  phantom     synthetic phantom CT scans; demo: the demo's data
"""
