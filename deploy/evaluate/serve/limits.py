"""Per-token limits of chat completions, kept in the registry's Redis.

Every ingress replica shares the count (Serve may run several), as the evaluations' limit does. A slot
is a member of the owner's sorted set scored by the time it lapses: a replica killed mid-chat never
releases its slots, so a slot lapses by itself once no chat could still be running (the chat
timeout). Taking a slot is one Lua script, so two requests racing for the last slot never both win.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

from sftrl.registry.store import PREFIX, REGISTRY_ERRORS

log = logging.getLogger(__name__)

# KEYS[1]: the owner's slots. ARGV: now, lapses at, limit, slot id, key ttl (s). Returns 1 if taken.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class ChatSlots:
    """At most ``limit`` chats in flight per owner (a hash of the token, never the token)."""

    def __init__(self, redis: Any, limit: int, hold_s: float):
        self.redis = redis
        self.limit = limit
        self.hold_s = hold_s  # longest a slot is held without being released: the chat timeout and a margin
        self._take = redis.register_script(_TAKE)

    @staticmethod
    def key(owner: str) -> str:
        return f"{PREFIX}chats:{owner}"

    def take(self, owner: str) -> str | None:
        """A slot id, or None when ``owner`` already has ``limit`` chats in flight."""
        slot, now = uuid.uuid4().hex, time.time()
        args = [now, now + self.hold_s, self.limit, slot, math.ceil(self.hold_s) + 60]
        return slot if int(self._take(keys=[self.key(owner)], args=args)) else None

    def release(self, owner: str, slot: str) -> None:
        """Give the slot back; if Redis is out of reach, it lapses by itself (the answer still goes out)."""
        try:
            self.redis.zrem(self.key(owner), slot)
        except REGISTRY_ERRORS as exc:
            log.warning("could not release a chat slot (it lapses within %.0f s): %s", self.hold_s, exc)
