"""The ``fedtalos`` command line: one module per command; nothing in the app imports this package."""
