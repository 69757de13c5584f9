"""Lua scripts of the Redis backend; each runs atomically on the server in one round trip.

State of one subject (key or tenant), three keys sharing the tenant's hash tag:
  <ns>:{<tenant>}:<kind>:<id>:log    sorted set  request id -> admission time (µs, Redis TIME)
  <ns>:{<tenant>}:<kind>:<id>:tok    hash        request id -> "r<reserved>" | "s<settled>", "#sum" -> total
  <ns>:{<tenant>}:<kind>:<id>:lease  sorted set  request id -> lease expiry (µs)
KEYS hold these three per subject, key subject first, tenant last. Times are integers in µs (< 2^53,
exact in Lua's doubles). Token counts travel as strings so Lua never formats a large number.

Every key carries a TTL (log and tok: the window + 1 s, set at each admission; lease: the longest lease
+ 1 s), so an idle subject's state leaves Redis by itself. One subject holds at most `max_entries`
requests in its window and as many leases (the same ceiling as the in-memory backend, see memory.py).
"""

from __future__ import annotations

# Shared helpers, prepended to every script.
_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local BATCH = 512

-- Drop log entries admitted at or before `cutoff` and subtract their tokens from the running sum.
local function trim(log, tok, cutoff)
  while true do
    local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff, 'LIMIT', 0, BATCH)
    if #old == 0 then return end
    local vals = redis.call('HMGET', tok, unpack(old))
    local freed = 0
    for i = 1, #vals do
      if vals[i] then freed = freed + tonumber(string.sub(vals[i], 2)) end
    end
    redis.call('ZREM', log, unpack(old))
    redis.call('HDEL', tok, unpack(old))
    if freed ~= 0 then redis.call('HINCRBY', tok, '#sum', -freed) end
    if #old < BATCH then return end
  end
end

local function oldest_age(log)
  local e = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  if #e == 0 then return -1 end
  return now - tonumber(e[2])
end

local function used_tokens(tok)
  return tonumber(redis.call('HGET', tok, '#sum') or '0')
end
"""

# ARGV: window_us, request_id, reserved_tokens, lease_ttl_us, concurrency_retry_cap_us,
#       then rpm, tpm, max_concurrency per subject (-1 = unlimited), then max_entries (last).
# Returns {status, subject_index, limit_code, limit_value, retry_us, <count, tokens, oldest_age_us,
#          active_leases> per subject}; status 1 admitted, 0 rejected, -1 duplicate request id;
#          limit_code 1 rpm, 2 tpm, 3 concurrency; retry_us -1 = can never fit.
ADMIT = _COMMON + """
local window = tonumber(ARGV[1])
local rid = ARGV[2]
local need = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local n = #KEYS / 3
local max_entries = tonumber(ARGV[#ARGV])

-- Seconds until enough of the window expires for `need` more tokens; walks oldest entries first.
local function tpm_retry(log, tok, to_free)
  local freed, start = 0, 0
  while true do
    local ids = redis.call('ZRANGE', log, start, start + BATCH - 1, 'WITHSCORES')
    if #ids == 0 then return window end
    local members = {}
    for j = 1, #ids, 2 do members[#members + 1] = ids[j] end
    local vals = redis.call('HMGET', tok, unpack(members))
    for j = 1, #members do
      freed = freed + tonumber(string.sub(vals[j] or 'r0', 2))
      if freed >= to_free then return tonumber(ids[2 * j]) + window - now end
    end
    start = start + BATCH
  end
end

local w_idx, w_code, w_value, w_retry = 0, 0, 0, 0
local function consider(i, code, value, retry)
  local worse = w_idx == 0 or (w_retry ~= -1 and (retry == -1 or retry > w_retry))
  if worse then w_idx, w_code, w_value, w_retry = i, code, value, retry end
end

local counts, used, active = {}, {}, {}
for i = 1, n do
  local log, tok, lease = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local rpm = tonumber(ARGV[3 + 3 * i])
  local tpm = tonumber(ARGV[4 + 3 * i])
  local maxc = tonumber(ARGV[5 + 3 * i])
  -- The per-subject memory bound acts as an RPM (windowed subjects) and a concurrency ceiling.
  if (rpm >= 0 or tpm >= 0) and (rpm < 0 or rpm > max_entries) then rpm = max_entries end
  if maxc < 0 or maxc > max_entries then maxc = max_entries end
  trim(log, tok, now - window)
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
  if redis.call('ZSCORE', lease, rid) or redis.call('HEXISTS', tok, rid) == 1 then return {-1} end
  counts[i] = redis.call('ZCARD', log)
  used[i] = used_tokens(tok)
  active[i] = redis.call('ZCARD', lease)
  if rpm >= 0 and counts[i] + 1 > rpm then
    local retry = -1
    if rpm > 0 then
      local e = redis.call('ZRANGE', log, counts[i] - rpm, counts[i] - rpm, 'WITHSCORES')
      retry = tonumber(e[2]) + window - now
    end
    consider(i, 1, rpm, retry)
  end
  if tpm >= 0 and used[i] + need > tpm then
    local retry = -1
    if need <= tpm then retry = tpm_retry(log, tok, used[i] + need - tpm) end
    consider(i, 2, tpm, retry)
  end
  if maxc >= 0 and active[i] + 1 > maxc then
    local retry = -1
    if maxc > 0 then
      local e = redis.call('ZRANGE', lease, 0, 0, 'WITHSCORES')
      retry = cap
      if #e > 0 then retry = math.min(cap, math.max(0, tonumber(e[2]) - now)) end
    end
    consider(i, 3, maxc, retry)
  end
end

local status = 0
if w_idx == 0 then
  status = 1
  local window_ms = math.ceil(window / 1000) + 1000
  local ttl_ms = math.ceil(ttl / 1000) + 1000
  for i = 1, n do
    local log, tok, lease = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
    if tonumber(ARGV[3 + 3 * i]) >= 0 or tonumber(ARGV[4 + 3 * i]) >= 0 then
      redis.call('ZADD', log, now, rid)
      redis.call('HSET', tok, rid, 'r' .. ARGV[3])
      redis.call('HINCRBY', tok, '#sum', ARGV[3])
      redis.call('PEXPIRE', log, window_ms)
      redis.call('PEXPIRE', tok, window_ms)
      counts[i] = counts[i] + 1
      used[i] = used[i] + need
    end
    redis.call('ZADD', lease, now + ttl, rid)
    if redis.call('PTTL', lease) < ttl_ms then redis.call('PEXPIRE', lease, ttl_ms) end
    active[i] = active[i] + 1
  end
end

local out = {status, w_idx, w_code, w_value, w_retry}
for i = 1, n do
  local log = KEYS[3 * i - 2]
  out[#out + 1] = counts[i]
  out[#out + 1] = used[i]
  out[#out + 1] = oldest_age(log)
  out[#out + 1] = active[i]
end
return out
"""

# ARGV: request_id, actual_tokens. Returns {lease_released, first_settlement, tenant_active_leases}.
SETTLE = _COMMON + """
local rid, actual = ARGV[1], ARGV[2]
local n = #KEYS / 3
local released, first = 0, 0
for i = 1, n do
  local tok, lease = KEYS[3 * i - 1], KEYS[3 * i]
  if redis.call('ZREM', lease, rid) == 1 then released, first = 1, 1 end
  local v = redis.call('HGET', tok, rid)
  if v and string.sub(v, 1, 1) == 'r' then
    redis.call('HSET', tok, rid, 's' .. actual)
    redis.call('HINCRBY', tok, '#sum', tonumber(actual) - tonumber(string.sub(v, 2)))
    first = 1
  end
end
local tenant_lease = KEYS[3 * n]
redis.call('ZREMRANGEBYSCORE', tenant_lease, '-inf', now)
return {released, first, redis.call('ZCARD', tenant_lease)}
"""

# ARGV: request_id, lease_ttl_us. Returns 1 when the lease was still held (and is now renewed).
EXTEND = _COMMON + """
local rid, ttl = ARGV[1], tonumber(ARGV[2])
local ttl_ms = math.ceil(ttl / 1000) + 1000
local n = #KEYS / 3
local held = 0
for i = 1, n do
  local lease = KEYS[3 * i]
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
  if redis.call('ZADD', lease, 'XX', 'CH', now + ttl, rid) == 1 then held = 1 end
  if redis.call('PTTL', lease) < ttl_ms then redis.call('PEXPIRE', lease, ttl_ms) end
end
return held
"""

# KEYS: one subject's three keys. ARGV: window_us. Returns {count, tokens, oldest_age_us, active_leases}.
STATE = _COMMON + """
local log, tok, lease = KEYS[1], KEYS[2], KEYS[3]
trim(log, tok, now - tonumber(ARGV[1]))
redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
return {redis.call('ZCARD', log), used_tokens(tok), oldest_age(log), redis.call('ZCARD', lease)}
"""
