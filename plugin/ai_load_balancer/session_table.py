"""endpoint_hash's sessions: which replica each session key is bound to.

A session is named by a hash of (routed cluster, key), so neither the key (a
consumer or session id) nor the prompt is ever stored. A binding lives
`ttl_s` after it was last used.

Embedded (every worker VM of one Envoy process): shared data cannot delete
keys, so the table is direct-mapped like the prefix index: session s lives in
slot s mod capacity as "<session> <address> <expiry_s>"; a newer session that
lands in the same slot takes it (that older session is then new again: the
service's load balancing places it and it is bound anew). Memory stays
bounded at `capacity` entries.

Redis (shared by every gateway): `ailb:{<cluster>}:s:<session>` STRING
address, with the TTL; sans-IO here, the filter sends the commands.
"""

import hashlib

from proxywasm import hostcalls, resp

from .redis_state import key_prefix

# KEYS[1]: the session's key; ARGV[1]: TTL (s). The bound address (nil: none), its TTL renewed.
LOOKUP_SCRIPT = ("local a = redis.call('GET', KEYS[1]) "
                 "if a then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return a")


def session_id(cluster, key):
    """The session's name: 16 hex digits of (cluster, key)."""
    return hashlib.blake2b(f"{cluster}\0{key}".encode(), digest_size=8).hexdigest()


class EmbeddedSessions:
    def __init__(self, namespace, capacity, ttl_s):
        self.namespace = namespace
        self.capacity = capacity
        self.ttl_s = ttl_s

    def _slot(self, session):
        return f"ailb:ss:{self.namespace}:{int(session, 16) % self.capacity}"

    def lookup(self, session, now_s):
        """The address the session is bound to, or None; a binding with less
        than half its TTL left is renewed (one write per half TTL, not per
        request)."""
        value, _ = hostcalls.get_shared_data(self._slot(session))
        parts = value.decode().split(" ") if value else ()
        if len(parts) != 3 or parts[0] != session or not parts[2].isdigit():
            return None
        address, expiry = parts[1], int(parts[2])
        if expiry <= now_s:
            return None
        if expiry - now_s < self.ttl_s // 2:
            self.bind(session, address, now_s)
        return address

    def bind(self, session, address, now_s):
        hostcalls.set_shared_data(self._slot(session),
                                  f"{session} {address} {now_s + self.ttl_s}")


def redis_key(cluster, session):
    return f"{key_prefix(cluster)}:s:{session}"


def lookup_command(cluster, session, ttl_s):
    """Reads the session's address and renews its TTL, in one call."""
    return resp.command("EVAL", LOOKUP_SCRIPT, 1, redis_key(cluster, session), ttl_s)


def bind_command(cluster, session, address, ttl_s):
    return resp.command("SET", redis_key(cluster, session), address, "EX", ttl_s)


def parse_lookup(reply_bytes):
    """The bound address from lookup_command's reply, or None. Raises
    RedisError, or ValueError for a reply that is not the script's."""
    reply = resp.reply(reply_bytes)
    if reply is None:
        return None
    if not isinstance(reply, bytes) or not reply:
        raise ValueError(f"not a session lookup reply: {str(reply)[:80]}")
    return reply.decode()
