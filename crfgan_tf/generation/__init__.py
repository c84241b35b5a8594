"""The products of a run: the SavedModel and the volumes sampled from it.

  export   a run directory -> a SavedModel (`generate`, `encode`, `reconstruct`) and its
           metadata
  sample   loading a SavedModel, latents, generating, writing NIfTI/MHA/NRRD/npy with
           geometry and PNG previews
"""
