"""`python -m tools.bench_device` from the checkout: the command of crfgan_tf/cli/bench_device.py (console
script crfgan-bench-device)."""

from crfgan_tf.cli.bench_device import run

if __name__ == "__main__":
    run()
