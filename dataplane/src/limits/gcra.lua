-- Admission for the rate limits all replicas share (GCRA), and for the budgets a request
-- charges at the same time; settlement of token limits. See limits/redis.rs for the key layout
-- and why admission is one script call.
--
-- ARGV[1] is the mode:
--   'a'  admit rate limits. KEYS are GCRA cells; for KEYS[i]: ARGV[2i] = limit per minute,
--        ARGV[2i+1] = units to take.
--   'b'  admit rate limits and reserve budgets, all or nothing. ARGV[2] = n, the number of
--        GCRA cells (KEYS[1..n]); ARGV[3] = the amount (nano-dollars) to reserve on each budget
--        counter, KEYS[n+1..]. Entry k of KEYS (cell or counter) has its two values at
--        ARGV[2k+2], ARGV[2k+3]: a cell's limit per minute and units to take; a counter's
--        maximum and the expiry (seconds, 0 = none) to give it.
--   'm'  many admissions in one call (coalesced by limits/batch.rs), decided one after the
--        other: ARGV[2] = their count; then per admission ARGV[p] = n cells, ARGV[p+1] = m
--        counters, ARGV[p+2] = the amount to reserve on its counters, and its n + m entries'
--        two values each (as in 'b'). Its keys follow the previous admission's in KEYS. Returns
--        one reply per admission, each as below.
--   's'  settle: for KEYS[i]: ARGV[2i] = limit per minute, ARGV[2i+1] = signed units to add
--        (positive charges more, negative gives back).
-- Each cell holds the theoretical arrival time (TAT) in microseconds of Redis server time; each
-- budget counter the spend of its period in nano-dollars.
--
-- Admission checks every cell, then every counter, before it writes anything. It returns
--   {1, ahead_1, ..., ahead_n}  admitted; ahead_i = microseconds cell i's TAT is past now
--   {0, i, retry_after_us}       refused by cell i
--   {2, j, spent}                refused by budget counter j (KEYS[n+j]), at its maximum
-- Settle returns {1}.
if redis.replicate_commands then
  -- Redis < 5 needs this before TIME in a writing script; later versions always do so.
  pcall(redis.replicate_commands)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = 60000000
local mode = ARGV[1]

local function tat_of(key)
  local v = redis.call('GET', key)
  if v then
    return tonumber(v) or 0
  end
  return 0
end

-- Stores a TAT; a key whose TAT is not in the future is idle and need not exist.
local function store(key, tat)
  if tat <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
end

-- One admission: cells KEYS[k0+1..k0+n], then counters KEYS[k0+n+1..k0+n+m]; entry e (cell or
-- counter, 1-based) has its two values at ARGV[a0+2e], ARGV[a0+2e+1]. Checks every cell, then
-- every counter, before it writes anything; returns the reply described above.
local function admit(k0, n, m, amount, a0)
  local tats = {}
  for i = 1, n do
    local limit = math.max(tonumber(ARGV[a0 + 2 * i]), 1)
    local units = math.min(tonumber(ARGV[a0 + 2 * i + 1]), limit)
    local tat = math.max(tat_of(KEYS[k0 + i]), now) + units * window / limit
    local ahead = tat - now
    if ahead > window then
      return {0, i, math.ceil(ahead - window)}
    end
    tats[i] = tat
  end
  for k = n + 1, n + m do
    local spent = tonumber(redis.call('GET', KEYS[k0 + k]) or '0')
    if spent >= tonumber(ARGV[a0 + 2 * k]) then
      return {2, k - n, spent}
    end
  end
  for k = n + 1, n + m do
    redis.call('INCRBY', KEYS[k0 + k], amount)
    local ttl = tonumber(ARGV[a0 + 2 * k + 1])
    if ttl > 0 then
      redis.call('EXPIRE', KEYS[k0 + k], ttl)
    end
  end
  local out = {1}
  for i = 1, n do
    store(KEYS[k0 + i], tats[i])
    out[i + 1] = math.floor(tats[i] - now)
  end
  return out
end

if mode == 'a' then
  return admit(0, #KEYS, 0, 0, 0)
end

if mode == 'b' then
  local n = tonumber(ARGV[2])
  return admit(0, n, #KEYS - n, tonumber(ARGV[3]), 2)
end

if mode == 'm' then
  -- Many admissions, each as in 'b', decided one after the other in the order given.
  local replies, k0, p = {}, 0, 3
  for j = 1, tonumber(ARGV[2]) do
    local n, m = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
    replies[j] = admit(k0, n, m, tonumber(ARGV[p + 2]), p + 1)
    k0 = k0 + n + m
    p = p + 3 + 2 * (n + m)
  end
  return replies
end

if mode == 's' then
  for i = 1, #KEYS do
    local limit = math.max(tonumber(ARGV[2 * i]), 1)
    local delta = tonumber(ARGV[2 * i + 1]) * window / limit
    local tat = tat_of(KEYS[i])
    if delta >= 0 then
      -- Charging more: never past one window ahead.
      store(KEYS[i], math.min(math.max(tat, now) + delta, now + window))
    elseif tat > now then
      -- Giving back: never below now.
      store(KEYS[i], math.max(tat + delta, now))
    end
  end
  return {1}
end

return redis.error_reply('unknown mode')
