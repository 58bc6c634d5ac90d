"""camserve's wire contracts as Python: the protobuf/gRPC code generated from ``protos/`` and the
vocabulary derived from its enums.

Both the server (``camserve.front``) and the light client (``camserve_client``) import this package;
it needs only ``protobuf`` and ``grpcio``. ``make protos`` rewrites the generated modules and
``tests/test_protos.py`` fails when they drift from the ``.proto`` files.
"""
