"""rescueui: bare-metal disk image restore and capture for the Linux console."""

__version__ = "0.1.0"
