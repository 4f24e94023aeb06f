#!/usr/bin/env python
"""Django's command-line utility for Traverse.

On a machine where `python3 dev.py run` made the embedded install, the admin commands of the
README work as written: with no DJANGO_SECRET_KEY in the environment, the key that the run
command generated under TRAVERSE_VAR_DIR (default var/) is used. Production sets the variable,
and then nothing is read from var/.
"""

import os
import sys
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if not os.environ.get("DJANGO_SECRET_KEY"):
        var = Path(os.environ.get("TRAVERSE_VAR_DIR") or Path(__file__).resolve().parent / "var")
        key_file = var / "secret_key"
        if key_file.is_file():
            os.environ["DJANGO_SECRET_KEY"] = key_file.read_text().strip()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
