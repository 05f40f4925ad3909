"""`python -m pscompress.cli`: the console script, for environments without it on PATH."""
from pscompress.cli import main

main()
