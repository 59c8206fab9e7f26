"""mrdl_apps: every command line and the demo, in one place (the top layer).

Layers, lowest first: ``mrdl_runtime`` <- ``mrdl`` <- ``mrdl_export`` <- ``mrdl_bench`` <- ``mrdl_apps``;
a package imports only from layers below it (``tests/test_import_layers.py`` checks this).
The commands: ``mrdl`` (``mrdl_apps.cli``, subcommands imported lazily), ``mrdl-export``, ``mrdl-bench``.
"""
