"""deid: de-identify faces in drone footage with adversarial examples."""

__version__ = "0.1.0"
