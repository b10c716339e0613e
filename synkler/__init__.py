"""synkler: relay files from an upload host to a download host through a central host."""

__version__ = "0.10.0"
