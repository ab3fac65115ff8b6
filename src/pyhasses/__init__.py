"""pyhasses: a Server-Sent Events notification daemon, drop-in for hasses 1.30."""

__version__ = "0.1.0"
