"""`make demo`: the main job on the embedded phantom data (see crfgan_tf/demo.py)."""

from absl import app, flags

from crfgan_tf import demo

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "demo_run", "Where the phantoms, records and run go.")


def main(argv):
    del argv
    demo.run_demo(FLAGS.work_dir)


if __name__ == "__main__":
    app.run(main)
