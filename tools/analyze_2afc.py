"""`python -m tools.analyze_2afc` from the checkout: the command of crfgan_tf/cli/analyze_2afc.py (console
script crfgan-analyze-2afc)."""

from crfgan_tf.cli.analyze_2afc import run

if __name__ == "__main__":
    run()
