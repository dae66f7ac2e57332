"""Example site that installs reversehttp_gateway."""
