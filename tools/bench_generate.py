"""`python -m tools.bench_generate` from the checkout: the command of crfgan_tf/cli/bench_generate.py (console
script crfgan-bench-generate)."""

from crfgan_tf.cli.bench_generate import run

if __name__ == "__main__":
    run()
