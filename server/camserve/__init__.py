"""camserve: Class Activation Maps for Keras 3 classifiers, as a library and as a gRPC server."""

__version__ = "0.1.0"
