"""Shared state in Redis, sans-IO: commands out, replies in; the filter does the I/O.

Keys, all under one hash tag so a Redis Cluster keeps them in one slot:
  ailb:{<cluster>}:gws          ZSET  gateway VM id -> lease expiry (ms, Redis clock)
  ailb:{<cluster>}:n:<gateway>  HASH  replica address -> requests this gateway has in flight
  ailb:{<cluster>}:w:<gateway>  HASH  replica address -> prompt blocks to compute of those
  ailb:{<cluster>}:r:<gateway>  HASH  request id -> "<replica> <blocks>" it is counted for
  ailb:{<cluster>}:x:<gateway>:<request id>  STRING  released before its pick ran
  ailb:{<cluster>}:pc:<hash>    STRING "<replica> <stamp> ...": the replicas that last served
                                       this prompt-prefix block (at most 3, the latest first),
                                       each with its clock then
  ailb:{<cluster>}:clk          HASH  replica address -> prompt blocks sent there to compute

The pick script applies the preset rules of global_least_request and
prefix_cache (policies/least_request.py, policies/prefix_cache.py) to the sums
over live gateways and counts the pick in the same step, so a count can never
be read stale by another gateway. It records the prompt's blocks for the pick from the first one the
pick does not hold yet (all of them when the first block has less than half its
TTL left, or is more than half the replica's cache old, which refreshes the
chain). As embedded_prefix_index.py does, an entry is gone once its replica's
clock ran its cache size (in blocks, sent per candidate; 0: unknown) past its
stamp. A gateway that dies stops renewing its lease: its counts stop counting
and its hash expires. Counts never go below zero.

Releases go by request id, so they are idempotent and can be sent again until
Redis answers: a release finds the request's count and removes it, or, when
the pick has not run (a pick sent before a Redis pause can run after the
plugin timed it out), leaves a marker that makes the pick count nothing.
"""

import hashlib

from proxywasm import resp

from .picking import LimitReached, Pick

# ARGV: gateway, lease_ms, rotation, mode ("cost": prefix_cache's cost model,
#       "lr": least request), max_load_gap (-1: off), limit (0: none), ttl_s,
#       min_blocks, request id, prompt blocks, decode cost, move cost, candidate count,
#       candidates..., their cache sizes in blocks (0: unknown)..., block hashes...
PICK_SCRIPT = """
local p = KEYS[1]
local gw, lease = ARGV[1], tonumber(ARGV[2])
local rotation, costed = tonumber(ARGV[3]), ARGV[4] == 'cost'
local gap, limit, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local minb, rid = math.max(1, tonumber(ARGV[8])), ARGV[9]
local pblocks, dcost = tonumber(ARGV[10]), tonumber(ARGV[11])
local mcost, total = tonumber(ARGV[12]), tonumber(ARGV[13])
local h0, nh = 13 + 2 * total, #ARGV - 13 - 2 * total
if redis.call('DEL', p .. ':x:' .. gw .. ':' .. rid) == 1 then return {'', 0, 0, 'released'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local inflight, work, size, clock = {}, {}, {}, {}
for i = 1, total do
  local a = ARGV[13 + i]
  inflight[a], work[a], size[a] = 0, 0, tonumber(ARGV[13 + total + i])
end
redis.call('ZREMRANGEBYSCORE', p .. ':gws', '-inf', now)
redis.call('ZADD', p .. ':gws', now + lease, gw)
local function add(into, key)
  local kv = redis.call('HGETALL', key)
  for j = 1, #kv, 2 do
    local c = tonumber(kv[j + 1])
    if into[kv[j]] ~= nil and c > 0 then into[kv[j]] = into[kv[j]] + c end
  end
end
for _, g in ipairs(redis.call('ZRANGE', p .. ':gws', 0, -1)) do
  add(inflight, p .. ':n:' .. g)
  if costed then add(work, p .. ':w:' .. g) end
end
local cands = {}
for i = 1, total do
  local a = ARGV[13 + i]
  if limit <= 0 or inflight[a] < limit then cands[#cands + 1] = a end
end
if #cands == 0 then return {'', 0, 0, 'limit'} end
local matched, firstage, owners = {}, {}, {}
if nh > 0 then
  local clocks = redis.call('HMGET', p .. ':clk', unpack(ARGV, 14, 13 + total))
  for i = 1, total do clock[ARGV[13 + i]] = tonumber(clocks[i]) or 0 end
  local keys = {}
  for i = 1, nh do keys[i] = p .. ':pc:' .. ARGV[h0 + i] end
  owners = redis.call('MGET', unpack(keys))
  for i = 1, nh do
    if not owners[i] then break end
    for a, st in string.gmatch(owners[i], '(%S+) (%d+)') do
      local age = (clock[a] or 0) - tonumber(st)
      if (size[a] or 0) <= 0 or age < size[a] then  -- else evicted there
        matched[a] = i
        if i == 1 then firstage[a] = age end
      end
    end
  end
end
local n = #cands
local best, bestc, bestm, bestcost, reason = nil, 0, 0, 0, 'least_request'
if costed then
  local fewest = nil
  for i = 1, n do
    if fewest == nil or inflight[cands[i]] < fewest then fewest = inflight[cands[i]] end
  end
  local anym, held, top = false, {}, 0
  for i = 1, n do
    local a = cands[i]
    local m = matched[a] or 0
    if m < minb then
      m = 0
    elseif gap >= 0 and inflight[a] > fewest + gap then
      m, anym = 0, true
    end
    if m > pblocks then m = pblocks end
    held[a] = m
    if m > top then top = m end
  end
  for k = 0, n - 1 do
    local a = cands[(rotation + k) % n + 1]
    local c, m = inflight[a], held[a]
    local cost = pblocks - m + work[a] + dcost * c + mcost * (top - m)
    if best == nil or cost < bestcost then best, bestc, bestm, bestcost = a, c, m, cost end
  end
  reason = (bestm > 0) and 'prefix_match' or (anym and 'bounded_load' or 'least_load')
else
  for k = 0, n - 1 do
    local a = cands[(rotation + k) % n + 1]
    if best == nil or inflight[a] < bestc then best, bestc = a, inflight[a] end
  end
end
local w = costed and (pblocks - bestm) or 0
redis.call('HINCRBY', p .. ':n:' .. gw, best, 1)
redis.call('PEXPIRE', p .. ':n:' .. gw, lease)
if w > 0 then
  redis.call('HINCRBY', p .. ':w:' .. gw, best, w)
  redis.call('PEXPIRE', p .. ':w:' .. gw, lease)
end
redis.call('HSET', p .. ':r:' .. gw, rid, best .. ' ' .. w)
redis.call('PEXPIRE', p .. ':r:' .. gw, lease)
local from = 1
local held = matched[best] or 0
if held > 0 and firstage[best] and (size[best] <= 0 or firstage[best] <= size[best] / 2)
    and redis.call('PTTL', p .. ':pc:' .. ARGV[h0 + 1]) > ttl * 500 then
  from = held + 1
end
if nh > 0 then
  local stamp = redis.call('HINCRBY', p .. ':clk', best, math.max(pblocks - held, 0))
  redis.call('EXPIRE', p .. ':clk', ttl)
  for i = from, nh do
    local v, kept = best .. ' ' .. stamp, 1
    for a, st in string.gmatch(owners[i] or '', '(%S+) (%d+)') do
      if a ~= best and kept < 3 then v, kept = v .. ' ' .. a .. ' ' .. st, kept + 1 end
    end
    redis.call('SET', p .. ':pc:' .. ARGV[h0 + i], v, 'EX', ttl)
  end
end
return {best, bestc, bestm, reason}
"""

# ARGV: gateway, request id, lease_ms, what ("request": the request ended;
#       "work": its prompt is computed, it still counts as in flight)
RELEASE_SCRIPT = """
local r = KEYS[1] .. ':r:' .. ARGV[1]
local v = redis.call('HGET', r, ARGV[2])
local whole = ARGV[4] ~= 'work'
if not v then
  if whole then
    redis.call('SET', KEYS[1] .. ':x:' .. ARGV[1] .. ':' .. ARGV[2], 1, 'PX', tonumber(ARGV[3]))
  end
  return 0
end
local a, w = string.match(v, '^(.*) (%d+)$')
if whole then
  redis.call('HDEL', r, ARGV[2])
  local k = KEYS[1] .. ':n:' .. ARGV[1]
  if redis.call('HINCRBY', k, a, -1) <= 0 then redis.call('HDEL', k, a) end
  redis.call('PEXPIRE', k, tonumber(ARGV[3]))
else
  redis.call('HSET', r, ARGV[2], a .. ' 0')
end
w = tonumber(w)
if w > 0 then
  local kw = KEYS[1] .. ':w:' .. ARGV[1]
  if redis.call('HINCRBY', kw, a, -w) <= 0 then redis.call('HDEL', kw, a) end
  redis.call('PEXPIRE', kw, tonumber(ARGV[3]))
end
return 1
"""

# ARGV: gateway, lease_ms
RENEW_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = KEYS[1] .. ':n:' .. ARGV[1]
if redis.call('EXISTS', k) == 1 then
  redis.call('ZADD', KEYS[1] .. ':gws', now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', k, tonumber(ARGV[2]))
  redis.call('PEXPIRE', KEYS[1] .. ':r:' .. ARGV[1], tonumber(ARGV[2]))
  redis.call('PEXPIRE', KEYS[1] .. ':w:' .. ARGV[1], tonumber(ARGV[2]))
end
return 1
"""


PICK_SHA = hashlib.sha1(PICK_SCRIPT.encode()).hexdigest()


class NoScript(Exception):
    """Redis does not hold the pick script (restarted, or flushed): nothing was
    counted; send it again with EVAL."""


def key_prefix(cluster):
    return f"ailb:{{{cluster}}}"


def pick_command(cluster, gateway, lease_ms, rotation, candidates, hashes=(), costed=False,
                 max_load_gap=-1, limit=0, ttl_s=1800, min_blocks=1, request_id="0",
                 prompt_blocks=0, decode_cost=0, cached=False, sizes=(), move_cost=0):
    """The script call that picks among `candidates` and counts the pick for
    `request_id` (unique per gateway among its requests in flight). `costed`:
    prefix_cache's preset, otherwise global_least_request's.
    `sizes`: each candidate's KV cache in index blocks (0 or missing: unknown).
    `cached`: Redis holds the script, send its SHA1 only (EVALSHA)."""
    head = ("EVALSHA", PICK_SHA) if cached else ("EVAL", PICK_SCRIPT)
    return resp.command(*head, 1, key_prefix(cluster), gateway, lease_ms, rotation,
                        "cost" if costed else "lr", max_load_gap, limit, ttl_s, min_blocks,
                        request_id, prompt_blocks, decode_cost, repr(float(move_cost)),
                        len(candidates), *candidates,
                        *(tuple(sizes) or (0,) * len(candidates)), *hashes)


def parse_pick(reply_bytes):
    """The Pick from the pick script's reply. Raises LimitReached, NoScript,
    RedisError, or ValueError for a reply that is not the script's."""
    try:
        reply = resp.reply(reply_bytes)
    except resp.RedisError as exc:
        if str(exc).startswith("NOSCRIPT"):
            raise NoScript() from None
        raise
    # The script returns {address, inflight, matched, reason}.
    if not isinstance(reply, list) or [type(item) for item in reply] != [bytes, int, int, bytes]:
        raise ValueError(f"not the pick script's reply: {str(reply)[:80]}")
    address, inflight, matched, reason = reply
    pick = Pick(address.decode(), inflight, matched, reason.decode())
    if pick.reason == "limit":
        raise LimitReached()
    return pick


def release_command(cluster, gateway, request_id, lease_ms, work_only=False):
    """Uncounts request `request_id` of `gateway`, whether its pick ran already
    or runs later; `work_only`: only its prompt work (computed), the request
    still in flight. Idempotent: send it again until Redis answers."""
    return resp.command("EVAL", RELEASE_SCRIPT, 1, key_prefix(cluster), gateway, request_id,
                        lease_ms, "work" if work_only else "request")


def renew_command(cluster, gateway, lease_ms):
    return resp.command("EVAL", RENEW_SCRIPT, 1, key_prefix(cluster), gateway, lease_ms)
