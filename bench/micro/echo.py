"""The echo server of ``bench.micro``'s gRPC part (its own module: ``spawn`` re-imports it)."""

from __future__ import annotations

from typing import Any

SERVICE, METHOD = "bench.Echo", "Echo"


def serve(intercepted: bool, conn: Any) -> None:
    """A grpc.aio server with one trivial async unary method (HealthCheckRequest in, response out),
    with camserve's MalformedRequestInterceptor when ``intercepted``. Sends its port on ``conn``, then
    answers each message on ``conn`` with this process's CPU seconds (every thread, ns resolution);
    stops when ``conn`` closes."""
    import asyncio
    import time

    import grpc
    from grpc_health.v1 import health_pb2

    async def echo(request: Any, context: Any) -> Any:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def main() -> None:
        interceptors = []
        if intercepted:
            from camserve.front.interceptors import MalformedRequestInterceptor

            interceptors.append(MalformedRequestInterceptor())
        server = grpc.aio.server(interceptors=interceptors)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
            METHOD: grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        loop = asyncio.get_running_loop()
        try:
            while True:
                await loop.run_in_executor(None, conn.recv_bytes)
                conn.send(time.process_time())
        except (EOFError, OSError):  # the parent closed its end: stop
            pass
        await server.stop(0)

    asyncio.run(main())
