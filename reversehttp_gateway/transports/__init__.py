"""Transports: each turns the shared queue into one wire protocol for applications."""
