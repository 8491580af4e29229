"""probelink: real-time tele-ultrasound consultation server."""

__version__ = "0.1.0"
