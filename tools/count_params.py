"""`python -m tools.count_params`: crfgan-count-params, the command of crfgan_tf/cli/count_params.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.count_params import run

if __name__ == "__main__":
    run()
