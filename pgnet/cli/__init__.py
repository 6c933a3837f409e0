"""Command-line entry points, one module per command (``pgnet.cli.train``, ``pgnet.cli.convert``, ...).

Each module's ``main(argv)`` parses its arguments and calls the library; the files in ``scripts/`` and
``datasets/`` and the console scripts declared in setup.cfg all land there.
"""
