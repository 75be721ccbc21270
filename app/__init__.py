"""RRMM: the Rapid Response Media Mechanism."""
