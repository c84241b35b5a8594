"""Evaluation: how good generated volumes are (the in-training monitor is
crfgan_tf.training.monitor; the studies built on these, crfgan_tf.studies).

  sources     where volumes come from (records, volume files, SavedModels)
  medicalnet  the MedicalNet ResNet-50 feature network
  features    the feature extractor and the on-disk feature cache
  metrics     FD/FID, MMD, 3D MS-SSIM
  fid_mmd     FID and MMD of two sources
  physical    lung and density statistics in HU (no network)
"""
