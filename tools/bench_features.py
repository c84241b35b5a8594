"""`python -m tools.bench_features` from the checkout: the command of crfgan_tf/cli/bench_features.py (console
script crfgan-bench-features)."""

from crfgan_tf.cli.bench_features import run

if __name__ == "__main__":
    run()
