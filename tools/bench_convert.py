"""`python -m tools.bench_convert`: crfgan-bench-convert, the command of crfgan_tf/cli/bench_convert.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.bench_convert import run

if __name__ == "__main__":
    run()
