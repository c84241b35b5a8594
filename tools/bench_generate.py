"""`python -m tools.bench_generate`: crfgan-bench-generate, the command of crfgan_tf/cli/bench_generate.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.bench_generate import run

if __name__ == "__main__":
    run()
