"""`python -m tools.bench_device`: crfgan-bench-device, the command of crfgan_tf/cli/bench_device.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.bench_device import run

if __name__ == "__main__":
    run()
