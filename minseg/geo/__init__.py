"""Mineral prospectivity mapping: sample tables, evidence layers, IDW, screening, the MFAF ensemble."""
