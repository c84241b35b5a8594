"""`python -m tools.bench_convert` from the checkout: the command of crfgan_tf/cli/bench_convert.py (console
script crfgan-bench-convert)."""

from crfgan_tf.cli.bench_convert import run

if __name__ == "__main__":
    run()
