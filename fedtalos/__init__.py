"""fedtalos."""
