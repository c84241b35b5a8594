"""`python -m tools.bench_input`: crfgan-bench-input, the command of crfgan_tf/cli/bench_input.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.bench_input import run

if __name__ == "__main__":
    run()
