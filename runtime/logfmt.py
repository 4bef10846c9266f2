"""One-line descriptions of errors for log messages.

A `grpc.aio.AioRpcError` prints as a multi-line repr (status, details, debug_error_string with
a JSON blob); at INFO and WARNING a log line should say what happened in one line, so errors
go through `brief()`. The full error stays available at DEBUG (`exc_info`)."""

from __future__ import annotations

import grpc


def brief(e: BaseException) -> str:
    """`UNAVAILABLE: failed to connect` for a gRPC error; the first line of str(e) otherwise."""
    if isinstance(e, grpc.RpcError) and hasattr(e, "code") and hasattr(e, "details"):
        code = e.code()
        details = e.details() or ""
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        return f"{name}: {details.splitlines()[0]}" if details else name
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def link_label(names: dict[str, str], me: str, peer_id: str, qkdl_id: str) -> str:
    """`A-B (1234abcd)` for a link of node `me` to node `peer_id`, when the peer's name is known."""
    peer = names.get(peer_id)
    return f"{me}-{peer} ({qkdl_id[:8]})" if peer else f"{qkdl_id} (to node {peer_id})"
