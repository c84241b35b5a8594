"""Process utilities, without TensorFlow at import: the lowest layer with crfgan_tf.core.

  runtime     process settings (configure(): oneDNN, glibc's mmap threshold, lean CPU
              memory, a quiet TensorFlow start-up), peak memory
  fileio      atomic writes, output-directory checks, OS errors and full disks in words
  dirlock     one writer per output directory
  preemption  stopping on a signal
  progress    the one progress line (count, bar, rate, ETA)
"""
