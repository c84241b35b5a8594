"""Every command's flags and `main` (one module per command), and `run()`, what its console
script and its `python -m` shim call: runtime.run_command(main), which applies
runtime.configure() and then absl's app.run(main).

Modules here import only absl and light crfgan_tf modules at the top; TensorFlow and the
heavy libraries load inside `main`, after configure() has set the process up. The shims
that keep the documented commands are crfgan_tf/{train,export,sample}.py and the
checkout's data_prep/ and tools/ folders (not installed); setup.py names the console
scripts (crfgan-train, crfgan-convert, ...).
"""

from absl import flags

from crfgan_tf import geometry


def validate_embedding_factor(model_flag: str = "") -> None:
    """Registers the check of --embedding_factor against --img_size (and the command's
    --model or --models flag, `model_flag`; none: CRF-GAN), so that a factor a size or
    model does not have is refused by name before any work (geometry.check_factor)."""
    names = ["img_size", "embedding_factor"] + ([model_flag] if model_flag else [])

    def check(values):
        if values["img_size"] not in geometry.SIZES or not values["embedding_factor"]:
            return True  # --img_size's own validator names it; 0 is the size's default
        models = values.get(model_flag) or ["crfgan"]
        for model in [models] if isinstance(models, str) else models:
            try:
                geometry.check_factor(values["img_size"], values["embedding_factor"], model)
            except ValueError as err:
                raise flags.ValidationError(str(err)) from None
        return True

    flags.register_multi_flags_validator(names, check)
