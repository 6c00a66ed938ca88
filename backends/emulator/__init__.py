"""Local servers speaking Google's real gRPC protocols, with fault injection."""

from backends.emulator.server import Behaviour, Call, Emulator

__all__ = ["Behaviour", "Call", "Emulator"]
