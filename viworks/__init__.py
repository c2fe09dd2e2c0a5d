"""ViWorkS control plane: a backend and gateway agents linked by mutual-TLS WebSockets."""

__version__ = "0.1.0"
