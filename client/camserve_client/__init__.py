"""camserve client: talk to a camserve server with only grpcio, protobuf and numpy."""

__version__ = "0.1.0"
