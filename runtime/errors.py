"""The root of the errors this project raises on purpose. Catching `SdqkdError` catches every
refusal of ours (bad config, refused model change, key-store refusal...) and nothing else, so
a caller can tell a clear refusal from a bug."""

from __future__ import annotations


class SdqkdError(Exception):
    """Base class of every error sdqkd raises on purpose (each names what was wrong and where)."""


class MissingExtra(SdqkdError):
    """A feature needs an optional part of the package that is not installed."""

    def __init__(self, feature: str, extra: str, missing: str):
        super().__init__(f"{feature} needs the '{extra}' extra ({missing} is not installed): "
                         f"pip install 'sdqkd[{extra}]', or in a clone of the project: pip install '.[{extra}]'")
        self.extra = extra
