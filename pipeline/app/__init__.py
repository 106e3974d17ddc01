"""The command line and what it runs besides the pipelines: the demo, the Go toolchain builder."""
