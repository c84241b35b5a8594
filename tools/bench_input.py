"""`python -m tools.bench_input` from the checkout: the command of crfgan_tf/cli/bench_input.py (console
script crfgan-bench-input)."""

from crfgan_tf.cli.bench_input import run

if __name__ == "__main__":
    run()
