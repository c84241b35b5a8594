"""`python -m tools.profile_memory` from the checkout: the command of crfgan_tf/cli/profile_memory.py (console
script crfgan-profile-memory)."""

from crfgan_tf.cli.profile_memory import run

if __name__ == "__main__":
    run()
