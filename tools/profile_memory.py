"""`python -m tools.profile_memory`: crfgan-profile-memory, the command of crfgan_tf/cli/profile_memory.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.profile_memory import run

if __name__ == "__main__":
    run()
