"""Server-side machinery of the federated run: protocol, cohorts, aggregation, state, phases."""
