"""The rescueui engine: plain Python, never imports Textual.

Disk discovery, host profile, image formats, the restore/capture/verify engine,
pre-flight checks and reports. Front ends (TUI, CLI) only call into this package.
"""
