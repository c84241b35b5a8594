"""The one registry of commands: every `crfgan_tf/cli/<name>.py` module, the `python -m`
form its shim gives in the checkout, and what it does in one line. The console scripts
(setup.py), the shims (crfgan_tf/{train,export,sample}.py, data_prep/, tools/: their text
is `shim_source`), each command's --help header and the command table of
docs/installation.md all derive from it (tests/cli/test_registry.py holds them to it).

No imports: setup.py reads this file before the package's dependencies are installed.
"""

# name: (package of its `python -m` shim, what it does)
COMMANDS = {
    # data
    "convert": ("data_prep", "scans (LUNA16, GSP, NIfTI/MetaImage, DICOM) -> sharded TFRecords"),
    "make_phantoms": ("data_prep", "synthetic chest-CT phantoms (the demo's data)"),
    "luna16_labels": ("data_prep", "nodule labels from LUNA16's annotations.csv"),
    "lidc_labels": ("data_prep", "nodule and malignancy labels from LIDC-IDRI's XML"),
    # training and its products
    "train": ("crfgan_tf", "trains CRF-GAN or HA-GAN; resumes a run directory"),
    "export": ("crfgan_tf", "run directory -> SavedModel"),
    "sample": ("crfgan_tf", "SavedModel -> NIfTI/MHA/NRRD/npy volumes with PNG previews"),
    # evaluation and studies
    "fid_mmd": ("tools", "3D FID and MMD of generated volumes against real ones"),
    "make_2afc": ("tools", "builds the 2AFC reader study (one offline HTML page and a key)"),
    "analyze_2afc": ("tools", "analyses the reader study's answers"),
    "class_contrast": ("tools", "how a conditional model's classes differ"),
    "encode": ("tools", "features and reconstructions of real volumes from an export's encoder"),
    "downstream": ("tools", "the classification study: what synthetic data is worth"),
    "memorization": ("tools", "the memorisation audit: nearest neighbours of generated volumes"),
    "study": ("tools", "the head-to-head study: trains the arms, measures them, reports with statistics"),
    # the reference's checkpoints
    "import_reference": ("tools", "a PyTorch reference checkpoint -> a run directory"),
    "import_medicalnet": ("tools", "MedicalNet's PyTorch ResNet-50 -> the .npz FID reads"),
    # memory, speed and the reference's options
    "plan_memory": ("tools", "the memory a run needs, before it runs; what fits on which GPU"),
    "count_params": ("tools", "learnable parameters per module, against the reference"),
    "profile_memory": ("tools", "peak memory and iterations/s of training iterations"),
    "deviation_effects": ("tools", "what each departure from the reference changes in a step"),
    "bench_convert": ("tools", "seconds per scan of the conversion"),
    "bench_input": ("tools", "throughput of the training input stream"),
    "bench_generate": ("tools", "peak memory of generating a volume, per slab size"),
    "bench_features": ("tools", "memory and time of the FID feature extractor"),
    "bench_device": ("tools", "the GPU figures beside the memory planner's"),
}


def console_script(name: str) -> str:
    """crfgan-<name with dashes>."""
    return "crfgan-" + name.replace("_", "-")


def python_m(name: str) -> str:
    """The module `python -m` runs in the checkout, e.g. tools.fid_mmd."""
    return f"{COMMANDS[name][0]}.{name}"


def entry_points() -> list:
    """setup.py's console_scripts."""
    return [f"{console_script(n)} = crfgan_tf.cli.{n}:run" for n in COMMANDS]


def shim_path(name: str) -> str:
    """The shim's file, relative to the checkout."""
    return python_m(name).replace(".", "/") + ".py"


def shim_source(name: str) -> str:
    """The whole text of a command's `python -m` shim."""
    return (f'"""`python -m {python_m(name)}`: {console_script(name)}, the command of '
            f'crfgan_tf/cli/{name}.py\n(crfgan_tf/cli/registry.py)."""\n\n'
            f"from crfgan_tf.cli.{name} import run\n\n"
            'if __name__ == "__main__":\n    run()\n')


def main_guard(name: str) -> str:
    """The lines every command module carries right after its docstring, so that
    `python -m crfgan_tf.cli.<name>` runs it as its shim does: the module is imported
    under its own name (which owns its flags and help groups) and run; nothing below
    the guard runs twice."""
    return ('if __name__ == "__main__":  # python -m crfgan_tf.cli.' + name
            + ': run the module as imported\n'
            "    from importlib import import_module\n\n"
            f'    raise SystemExit(import_module("crfgan_tf.cli.{name}").run())\n')
