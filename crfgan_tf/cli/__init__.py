"""Every command's flags and `main` (one module per command), and `run()`, what its console
script and its `python -m` shim call: runtime.run_command(main), which applies
runtime.configure() and then absl's app.run(main).

Modules here import only absl and light crfgan_tf modules at the top; TensorFlow and the
heavy libraries load inside `main`, after configure() has set the process up. The shims
that keep the documented commands are crfgan_tf/{train,export,sample}.py and the
checkout's data_prep/ and tools/ folders (not installed); setup.py names the console
scripts (crfgan-train, crfgan-convert, ...).
"""
