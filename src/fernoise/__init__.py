"""fernoise: facial expression recognition with periodic and dynamic feature-level noise injection."""
__version__ = "0.1.0"
