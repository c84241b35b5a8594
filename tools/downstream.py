"""`python -m tools.downstream`: crfgan-downstream, the command of crfgan_tf/cli/downstream.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.downstream import run

if __name__ == "__main__":
    run()
