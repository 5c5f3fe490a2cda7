"""Per-call parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import CallError, ErrorCode


@dataclass(frozen=True)
class CallParams:
    """Options of ``call`` / ``group_call`` (TUICallKit's TUICallParams); an invalid value
    raises ``CallError(-1202)``."""

    #: seconds the invitees ring before the server gives up (onUserNoResponse)
    timeout: float = 30.0
    #: opaque string delivered to the callees in ``onCallReceived.userData``
    user_data: str = ""

    def __post_init__(self) -> None:
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not math.isfinite(self.timeout)
            or not 0 < self.timeout <= 3600
        ):
            raise CallError(
                ErrorCode.PARAM_INVALID,
                f"timeout must be a number of seconds in (0, 3600], got {self.timeout!r}",
            )
        if not isinstance(self.user_data, str):
            raise CallError(
                ErrorCode.PARAM_INVALID, f"user_data must be a string, got {self.user_data!r}"
            )
