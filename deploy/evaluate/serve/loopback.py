"""Keep a Serve replica's internal gRPC server on loopback when Ray's node address is loopback.

Ray Serve 2.60 starts a gRPC server in every replica, for calls between deployments, on "[::]"
(every interface) with no setting for its address (ray-project/ray#64544 asks for one). It requires
Ray's token, but on a local Ray nothing from another machine has a reason to reach it: the other
replicas and the proxy call it at the node's address, 127.0.0.1. A replica calls this in its
constructor, which Serve runs before it starts that server.
"""

from __future__ import annotations

from typing import Any

from sftrl.ports import is_loopback


def keep_replica_grpc_on_loopback() -> None:
    """In a Serve replica on a loopback node, make its gRPC server bind 127.0.0.1, not "[::]"."""
    import ray
    from ray.serve._private import replica

    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "keeps_loopback", False):
        return
    if not is_loopback(ray.util.get_node_ip_address()):
        return  # a cluster's replicas must be reachable from the other nodes

    def bind_on_loopback(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return original(server, address)

    bind_on_loopback.keeps_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_on_loopback
