"""`python -m tools.downstream` from the checkout: the command of crfgan_tf/cli/downstream.py (console
script crfgan-downstream)."""

from crfgan_tf.cli.downstream import run

if __name__ == "__main__":
    run()
