"""`python -m tools.count_params` from the checkout: the command of crfgan_tf/cli/count_params.py (console
script crfgan-count-params)."""

from crfgan_tf.cli.count_params import run

if __name__ == "__main__":
    run()
