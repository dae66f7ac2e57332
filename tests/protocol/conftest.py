"""Fixtures for the pure wire-format tests: none are needed, and nothing here imports Django.

Run with ``pytest -p no:django tests/protocol`` while the Django settings do not exist.
"""
