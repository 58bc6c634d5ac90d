"""The helper every test and benchmark starts servers with: a port it picked that is taken before the
server binds it (another process's connection took it) costs a restart on other ports, not a failure."""

from __future__ import annotations

import socket

import pytest
import serverproc


def test_a_picked_port_taken_before_the_server_binds_it_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        picks: list[list[int]] = []
        free_ports = serverproc.free_ports

        def first_pick_taken(n: int) -> list[int]:  # the race, made certain: the first gRPC port is taken
            ports = free_ports(n)
            picks.append([taken, *ports[1:]] if not picks else ports)
            return picks[-1]

        monkeypatch.setattr(serverproc, "free_ports", first_pick_taken)
        srv = serverproc.start_server("--runner", "bench.frontend.standin:StandInRunner")
        try:
            assert len(picks) == 2 and srv.grpc_port != taken
            assert srv.health() == "SERVING"
        finally:
            srv.stop()


def test_free_ports_are_distinct() -> None:
    ports = serverproc.free_ports(16)
    assert len(set(ports)) == 16
