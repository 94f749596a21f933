"""Dagster layer: thin assets, checks, resources and automation over the core modules."""
