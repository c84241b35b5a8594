"""The commands: one module per command with its flags, `main` and `run()`, what its
console script and its `python -m` shim call (common.run_command(main): --help from the
command's own flags, runtime.configure(), absl's app.run(main)).

  registry   the one list of commands: console scripts, `python -m` shims, summaries
  common     what every command shares: running, errors to exit statuses, fields to
             flags, the flags several commands define
  helptext   every command's --help

Command modules import only absl and light crfgan_tf modules at the top; TensorFlow and
the heavy libraries load inside `main`, after configure() has set the process up. The
library speaks of fields; only these modules read flags.
"""
