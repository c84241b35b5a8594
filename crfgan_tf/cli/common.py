"""What every command shares: how it runs (`run_command`), how its errors become one line
and an exit status (`command`), how the library's field names become its flags
(`flagged`, `log`), and the flags and help texts that several commands define alike.

The library speaks of fields (`img_size` must be one of ...); a command speaks of flags
(--img_size must be one of ...). Library messages write a field in backticks; `flagged`
turns each backticked name that is one of the process's flags into that flag, and leaves
other backticked names (a signature, a file) as they are.

Exit statuses of every command: 0 done; 2 the user's to fix (a flag's name or value, a missing or
unreadable input, an output that cannot be written, a full disk, a locked directory);
4 a device ran out of memory (OUT_OF_MEMORY: one line naming the phase, what fits and
the flags that cut memory); other statuses are the command's own (its
`command(statuses=...)`: 1 a mismatch in what was read, 3 a non-finite loss) and
128 + N for a stop by signal N.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Callable, Dict, Iterable, Optional

from absl import flags

from crfgan_tf.core import geometry
from crfgan_tf.utils import fileio, runtime

FLAGS = flags.FLAGS

OUT_OF_MEMORY = 4

# every command's own switch of runtime.configure()'s GPU memory growth
flags.DEFINE_bool("gpu_memory_growth", True,
                  "Let TensorFlow take GPU memory as it needs it (TF_FORCE_GPU_ALLOW_GROWTH) "
                  "instead of nearly all of every card at the first operation.")

# ---- help texts of flags that several commands define ----------------------------------
EMBEDDING_FACTOR_HELP = (
    "Volume voxels per embedding voxel along each axis: 4 (the reference's, every size) or, "
    "CRF-GAN at --img_size=512 only, 8: G1's embedding stays 64^3 (the 256^3 trunk), G2 "
    "gains a third up-sampling stage and hE a third stride-2 stage, the CRF keeps 64 nodes "
    "(docs/resolution.md compares the two). 0: the size's default, 8 for CRF-GAN at 512 "
    "and 4 otherwise.")
REMAT_HELP = (
    "Recompute G1's, G2's and hE's activations in the backward pass (tf.recompute_grad) "
    "instead of keeping them: the same results, a lower peak where those backward passes "
    "are it, more time. docs/resolution.md has what it saves and costs.")
FEATURE_SIDE_HELP = (
    "Volumes with a larger side are averaged over f^3 blocks down to this side before "
    "MedicalNet (memory and time stay those of this side^3; the volumes' side must be a "
    "multiple of it); the output states the side used. Features at different sides are not "
    "comparable.")


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
                raise flags.ValidationError(flagged(str(err))) from None
        return True

    flags.register_multi_flags_validator(names, check)


# ---- fields to flags ---------------------------------------------------------------------
_FIELD = re.compile(r"`([a-z][a-z0-9_]*)((?:=[^`]*)?)`")


@functools.lru_cache(maxsize=None)
def command_flags() -> frozenset:
    """The flags every command defines (read from the commands' sources, without importing
    them) and absl's --flagfile: a message of one command may name another's
    ("convert again with `labels_csv=FILE`")."""
    import ast

    from crfgan_tf.cli import registry

    names = {"flagfile"}
    folder = os.path.dirname(os.path.abspath(__file__))
    for name in registry.COMMANDS:
        with open(os.path.join(folder, f"{name}.py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names |= {node.args[0].value for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and getattr(node.func, "attr", "").startswith(
                      "DEFINE_") and node.args and isinstance(node.args[0], ast.Constant)}
    return frozenset(names)


def flagged(message: str) -> str:
    """`message` with each backticked field that is a flag (of this command, or of any
    command) written as that flag: "`img_size` must be one of ..." -> "--img_size must be
    one of ...", "`batch_size=3`" -> "--batch_size=3"; other backticked names stay."""
    return _FIELD.sub(lambda m: f"--{m.group(1)}{m.group(2)}"
                      if m.group(1) in FLAGS or m.group(1) in command_flags() else m.group(0),
                      message)


def log(message: str) -> None:
    """A library log line on stderr, its fields written as flags."""
    print(flagged(message), file=sys.stderr, flush=True)


def say(message: str) -> None:
    """A library line on stdout (a command's report), its fields written as flags."""
    print(flagged(message), flush=True)


# ---- errors to exit statuses ------------------------------------------------------------
class CommandError(Exception):
    """A command's own refusal: printed as "error: <message>", exit `status`."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


# Exceptions that are the user's to fix in every command (exit 2), besides a ValueError,
# FileNotFoundError or FileExistsError that crfgan_tf raised itself (the library's
# bad-value errors: fileio.OutputError, dirlock.LockedError, rundir.RunDirError,
# records.RecordsError, labels.LabelsError, lidc.LidcError, ...; one raised inside numpy
# or Keras is a bug and keeps its traceback). By "module:Class": a class whose module has
# not been loaded cannot have been raised, and the commands stay light to import.
USER_ERRORS = ("crfgan_tf.evaluation.sources:EvaluationError",
               "crfgan_tf.generation.sample:SavedModelError",
               "crfgan_tf.studies.reader_study:StudyError",
               "crfgan_tf.training.checkpointing:NoReadableCheckpointError")


def _loaded(spec) -> Optional[type]:
    if isinstance(spec, type):
        return spec
    module, name = spec.split(":")
    return getattr(sys.modules[module], name) if module in sys.modules else None


def _tensorflow_file_errors() -> tuple:
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return ()
    return (tf.errors.PermissionDeniedError, tf.errors.FailedPreconditionError,
            tf.errors.AlreadyExistsError)


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raised_here(err: BaseException) -> bool:
    """Whether crfgan_tf raised `err` itself (a value it refused, with its message), not
    numpy, Keras or TensorFlow deep inside (a bug, whose traceback is kept)."""
    tb, last = err.__traceback__, None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and os.path.abspath(last).startswith(_PACKAGE + os.sep)


def error_status(err: BaseException, statuses: Dict = None, errors: Iterable = ()):
    """(exit status, one-line message) of an exception a command's main raised, or None
    for a bug (its traceback is kept)."""
    for spec, status in (statuses or {}).items():
        cls = _loaded(spec)
        if cls is not None and isinstance(err, cls):
            return status, str(err)
    if isinstance(err, CommandError):
        return err.status, str(err)
    if isinstance(err, fileio.DiskFullError):
        return 2, str(err)
    if isinstance(err, OSError) and (err.filename or err.errno in fileio.DISK_FULL_ERRNOS):
        return 2, fileio.describe_os_error(err)  # a path the user gave, in words
    user = tuple(c for c in map(_loaded, (*USER_ERRORS, *errors)) if c is not None)
    if isinstance(err, user):
        return 2, str(err)
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError)) and _raised_here(err):
        return 2, str(err)
    if isinstance(err, OSError):
        return None
    if isinstance(err, _tensorflow_file_errors()):
        return 2, str(err).strip().splitlines()[0]
    reason = fileio.disk_full_reason(err)
    if reason is not None:  # a full disk, wrapped in another library's error
        return 2, f"{reason}: {str(err).strip().splitlines()[-1][:300]}"
    return None


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is a device running out of memory: TensorFlow's ResourceExhaustedError
    for an allocation ("OOM when allocating ...", "Failed to allocate memory for the
    batch ..."), or one the library wrapped with where it
    happened (training.loop.OutOfMemoryError)."""
    wrapped = _loaded("crfgan_tf.training.loop:OutOfMemoryError")
    if wrapped is not None and isinstance(err, wrapped):
        return True
    tf = sys.modules.get("tensorflow")
    text = str(err)
    return tf is not None and isinstance(err, tf.errors.ResourceExhaustedError) and (
        "OOM" in text or "memory" in text.lower())


def device_text() -> str:
    """The device and its memory, for an out-of-memory line ("GPU:0 (NVIDIA H100, 79.1
    GiB)", "CPU (RAM 23.4 GiB)")."""
    try:
        return runtime.device_memory()[0]
    except Exception:  # noqa: BLE001 - a description only; the error line must still come
        return "this device"


def default_out_of_memory(phase: str, cuts: str) -> Callable:
    """An out-of-memory line for a command (command(oom=...)): `phase` ("sampling"), the
    device and `cuts`, what lowers memory ("a lower `batch_size`")."""
    return lambda err: f"out of memory in {phase} on {device_text()}; what cuts memory: {cuts}"


def _set_gpu_memory_growth() -> None:
    """--gpu_memory_growth given: TF_FORCE_GPU_ALLOW_GROWTH as it says (runtime.configure
    set "true" unless the environment had a value, which wins over the flag's default)."""
    if "gpu_memory_growth" in FLAGS and FLAGS["gpu_memory_growth"].present:
        os.environ[runtime.GPU_MEMORY_GROWTH_VARIABLE] = str(FLAGS.gpu_memory_growth).lower()


def warn_if_gpu_unseen() -> None:
    """runtime.unseen_gpu_warning's line on stderr, once per process, before any work (it
    loads TensorFlow only where an NVIDIA driver is)."""
    global _gpu_checked
    if _gpu_checked:
        return
    _gpu_checked = True
    line = runtime.unseen_gpu_warning()
    if line:
        print(flagged(line), file=sys.stderr, flush=True)


_gpu_checked = False


def command(statuses: Dict = None, errors: Iterable = (),
            oom: Optional[Callable] = None) -> Callable:
    """Decorates a command's absl `main(argv)`, the one error handling of every command:
    positional arguments are refused (flags need --name=value); Python-side INFO
    logging (TensorFlow's "Assets written to ...") is off unless --verbosity is given;
    main's return value is the exit status (None: 0); an exception that is the user's to
    fix (error_status) is printed as "error: <message>" with its fields as flags and
    exits with its status; any other keeps its traceback (a bug).

    Args:
      statuses: {exception class or "module:Class": exit status} checked first, for the
        command's own statuses (a ReferenceMismatch is 1).
      errors: further exception classes (or "module:Class") that exit 2 in this command.
      oom: err -> the one line of an out-of-memory error (out_of_memory), exit
        OUT_OF_MEMORY; default_out_of_memory(phase, cuts) makes one. Without it the line
        names the command and, if it has one, --batch_size.
    """
    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def wrapped(argv):
            if len(argv) > 1:
                print(f"error: unexpected arguments {argv[1:]} (flags need --name=value)",
                      file=sys.stderr)
                return 2
            if not runtime.verbosity_given(sys.argv[1:]):  # absl removed the flags from argv
                from absl import logging  # TensorFlow's INFO lines drown the progress lines

                logging.set_verbosity(logging.WARNING)
            _set_gpu_memory_growth()
            if "tensorflow" in sys.modules:  # loaded by runtime.configure: no operation yet
                runtime.note_baseline_memory()
                warn_if_gpu_unseen()
            try:
                status = main(argv)
            except Exception as err:  # noqa: BLE001 - error_status keeps what is a bug
                if out_of_memory(err):
                    line = (oom or _generic_out_of_memory(main))(err)
                    print(f"error: {flagged(line)}", file=sys.stderr)
                    return OUT_OF_MEMORY
                outcome = error_status(err, statuses, errors)
                if outcome is None:
                    raise
                print(f"error: {flagged(outcome[1])}", file=sys.stderr)
                return outcome[0]
            return 0 if status is None else status

        return wrapped

    return decorate


def _generic_out_of_memory(main: Callable) -> Callable:
    name = main.__module__.rsplit(".", 1)[-1]
    cuts = "a lower `batch_size`" if "batch_size" in FLAGS else "smaller inputs"
    return default_out_of_memory(name.replace("_", "-"), cuts)


# ---- running ----------------------------------------------------------------------------
def parse_flags(module, argv: list) -> list:
    """absl's flag parsing of `argv` for the command whose flags are in `module`, with this
    project's exit status: a misspelt flag, a value outside a flag's choices, a validator's
    refusal or a missing required flag is one line, "error: <absl's message>; see
    <command> --help", and exit status 2 (absl's own parser prints two lines and exits 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        from crfgan_tf.cli import helptext

        message = re.sub(r"^Unknown command line flag '([^']+)'(?:\. Did you mean: (.+?) \?)?",
                         lambda m: f"unknown flag --{m.group(1)}" + (
                             f" (did you mean --{m.group(2)}?)" if m.group(2) else ""), str(err))
        print(f"error: {message}; see {helptext.command_names(module)[0]} --help",
              file=sys.stderr)
        sys.exit(2)


def run_command(main: Callable, load_tensorflow: bool = True) -> None:
    """What every command's run() does: --help answered from the command's own flags
    (crfgan_tf.cli.helptext), else runtime.configure(), then absl's app.run(main) (flags
    parsed, exit status from main). With CRFGAN_LEAN_CPU_MEMORY=1 the command first starts
    itself again (same process id, same arguments) with runtime.lean_start_environment()
    added. `load_tensorflow=False` for commands that may finish without TensorFlow
    (--dry_run, flag errors, conversion workers' parent)."""
    from absl import app

    from crfgan_tf.cli import helptext

    if helptext.wants_help(sys.argv):
        helptext.print_help_and_exit(sys.modules[main.__module__])
    start_env = (runtime.lean_start_environment() if runtime.lean_cpu_memory_requested()
                 else {})
    if start_env:  # glibc reads its tunables at start: the same command again, with them
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **start_env})
    runtime.configure(load_tensorflow=load_tensorflow)
    app.run(main, flags_parser=functools.partial(parse_flags, sys.modules[main.__module__]))
