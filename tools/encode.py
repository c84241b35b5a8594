"""`python -m tools.encode`: crfgan-encode, the command of crfgan_tf/cli/encode.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.encode import run

if __name__ == "__main__":
    run()
