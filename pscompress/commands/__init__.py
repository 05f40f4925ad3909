"""One module per CLI subcommand (see pscompress/cli.py)."""
