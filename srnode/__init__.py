"""The `srnode` command: the top of the import graph, assembling every package's subcommands."""
