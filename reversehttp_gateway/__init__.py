"""A self-hosted Reverse HTTP gateway as a Django reusable app."""

__version__ = "0.1.0"
