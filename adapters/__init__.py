"""Adapters that give each trajectory-matching distiller (MTT, FTD, DATM, ATT) TAD in a few lines.

Installed as ``tad_plugin.adapters`` (PyPI's ``adapters`` owns the top-level name).
"""
