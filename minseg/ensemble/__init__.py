"""Ensembles: evaluate members, rank them, fuse them (RUEL-k), select one, write its manifest."""
