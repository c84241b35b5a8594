"""`python -m tools.plan_memory` from the checkout: the command of crfgan_tf/cli/plan_memory.py (console
script crfgan-plan-memory)."""

from crfgan_tf.cli.plan_memory import run

if __name__ == "__main__":
    run()
