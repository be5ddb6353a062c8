"""live-pull: keep a running app in step with its git repository."""

__version__ = "0.1.0"
