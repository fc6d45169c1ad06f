"""Landing-zone and reporting commands: `python -m include.tools.<name> --help`."""
