"""The root of the errors this project raises on purpose. Catching `SdqkdError` catches every
refusal of ours (bad config, refused model change, key-store refusal...) and nothing else, so
a caller can tell a clear refusal from a bug."""

from __future__ import annotations


class SdqkdError(Exception):
    """Base class of every error sdqkd raises on purpose (each names what was wrong and where)."""
