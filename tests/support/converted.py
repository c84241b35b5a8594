"""What a conversion leaves for `crfgan-train --dry_run` to find, without converting: the
shards its glob names (empty) and the manifest's size. For tests of flag handling that
run documented commands whose records (data/luna16_256, ...) no test converts."""

import json
import os


def converted(cwd, pattern, size):
    """A train and a val shard in the folder of each comma-separated glob of `pattern`
    (relative to `cwd`), with a manifest.json that says `size`."""
    for glob_ in pattern.split(","):
        folder = os.path.join(str(cwd), os.path.dirname(glob_))
        os.makedirs(folder, exist_ok=True)
        for name in ("train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"):
            open(os.path.join(folder, name), "wb").close()
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump({"settings": {"size": size}}, f)


def checkout_view(cwd, repo):
    """`cwd` made to look like the checkout for commands run there: its configs/ linked."""
    os.symlink(os.path.join(repo, "configs"), os.path.join(str(cwd), "configs"))
