"""lightabaco: Abaco-compatible actors on one machine, without Docker and without root."""

__version__ = "0.1.0"
