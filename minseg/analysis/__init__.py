"""Analyses of trained members (kernel-weight histograms)."""
