"""Reports of a gate run: the terminal table, and files for CI (JSON, Markdown)."""
