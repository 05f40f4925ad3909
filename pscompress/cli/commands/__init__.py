"""One module per CLI subcommand (see pscompress/cli/__init__.py)."""
