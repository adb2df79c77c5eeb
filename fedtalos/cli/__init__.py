"""The ``fedtalos`` command line: one module per command, ``main`` the dispatcher, ``options`` what commands share.

Nothing in the app imports this package.
"""
