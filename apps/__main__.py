"""``python -m mrdl_apps ...`` runs the ``mrdl`` command (the same click group as the console script)."""

from mrdl_apps.cli import main

if __name__ == "__main__":
    main(prog_name="mrdl")
