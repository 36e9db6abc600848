"""Tools over a Dagster instance: stale-only runs, lineage, metric history, staleness."""
