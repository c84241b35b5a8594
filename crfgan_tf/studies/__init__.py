"""Studies of what synthetic data is worth, built on crfgan_tf.evaluation.

  downstream     the classification study (real, synthetic, mixed arms) and the linear probe
  memorization   the memorisation audit (nearest neighbours in two spaces)
  reader_study   the 2AFC reader study: building the page and key, analysing the answers
"""
