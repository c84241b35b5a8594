"""crfgan-tf: CRF-GAN for 3D chest CT synthesis in Keras 3 / TensorFlow.

Importing it changes nothing in the process: entry points call
`crfgan_tf.runtime.configure()` (oneDNN, lean CPU memory, quiet TensorFlow) themselves.
Kept import-light: `crfgan_tf.data.phantom` and `crfgan_tf.data.preprocess` do not import
TensorFlow, so conversion workers start fast. Import submodules directly; the layout is
docs/architecture.md.
"""

__version__ = "0.2.0"  # CHANGELOG.md; setup.py reads it from here
