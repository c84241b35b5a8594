"""`python -m tools.study`: crfgan-study, the command of crfgan_tf/cli/study.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.study import run

if __name__ == "__main__":
    run()
