"""Peak CPU memory of generating one full-resolution volume from an export, per slab size.

  python -m tools.bench_generate --img_size=256 --slabs=8,64
"""

import json

from absl import app, flags

from crfgan_tf import benchmark, runtime

FLAGS = flags.FLAGS
flags.DEFINE_integer("img_size", 256, "Volume side.")
flags.DEFINE_list("slabs", ["8", "64"], "G2 slab sizes (embedding slices); img_size/4 = one shot.")


@runtime.reports_user_errors
def main(argv):
    del argv
    rows = benchmark.generate_memory(FLAGS.img_size, [int(s) for s in FLAGS.slabs])
    print(json.dumps(rows))


if __name__ == "__main__":
    app.run(main)
