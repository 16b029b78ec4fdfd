"""Errors that edgeseg reports to a user as one line, with the fix."""

from __future__ import annotations


class EdgesegError(Exception):
    """A failure the user can act on. The CLI prints ``str(err)`` alone and exits 2.

    Messages name the file involved and the fix, so they never need a traceback.
    """


class ToolchainMissing(EdgesegError):
    """A target's toolchain or runtime is not installed; the message holds the install command."""
