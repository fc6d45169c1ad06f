"""The commands people run (console scripts of pyproject.toml: `lakehouse-stage-orders --help`, ...) and
the steps `make setup` takes (`python -m include.tools.<name>`)."""
