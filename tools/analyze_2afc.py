"""`python -m tools.analyze_2afc`: crfgan-analyze-2afc, the command of crfgan_tf/cli/analyze_2afc.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.analyze_2afc import run

if __name__ == "__main__":
    run()
