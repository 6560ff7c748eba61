"""Ingest: sources and layouts -> validated items -> streaming Ray Datasets of tiles."""
