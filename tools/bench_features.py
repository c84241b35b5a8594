"""`python -m tools.bench_features`: crfgan-bench-features, the command of crfgan_tf/cli/bench_features.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.bench_features import run

if __name__ == "__main__":
    run()
