"""`python -m tools.plan_memory`: crfgan-plan-memory, the command of crfgan_tf/cli/plan_memory.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.plan_memory import run

if __name__ == "__main__":
    run()
