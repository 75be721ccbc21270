"""The live app and its operator client are the acknowledgement tests' own (pytest shares
conftest fixtures only down a folder, so they are imported here by name)."""

from tests.acks.conftest import live, live_api

__all__ = ["live", "live_api"]
