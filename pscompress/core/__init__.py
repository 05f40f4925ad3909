"""The numpy-only core both sides share: errors, patterns, limits, metadata, safe input reading, atomic files."""
