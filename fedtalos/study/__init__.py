"""The study: grid files → planned runs → sweeps, the centralized search, result tables, figures and analyses.

Reads what runs wrote (run directories); nothing in the app imports this package.
"""
