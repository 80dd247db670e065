"""The runnable programs of the mesh and the `mesh` command line: wiring only."""
