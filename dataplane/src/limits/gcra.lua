-- GCRA over Redis: admission and settlement for the rate limits all replicas share.
-- See limits/redis.rs for the key layout and why it is one script.
--
-- ARGV[1] = 'a' (admit) or 's' (settle); then, for each KEYS[i]:
--   ARGV[2i] = limit per minute, ARGV[2i+1] = units to take (admit) or signed units to add
--   (settle: positive charges more, negative gives back).
-- Each key holds the theoretical arrival time (TAT) in microseconds of Redis server time.
--
-- Admit is all or nothing: every key is checked before any is written. It returns
--   {1, ahead_1, ..., ahead_n}  admitted; ahead_i = microseconds key i's TAT is past now
--   {0, i, retry_after_us}       refused by key i
-- Settle returns {1}.
if redis.replicate_commands then
  -- Redis < 5 needs this before TIME in a writing script; later versions always do so.
  pcall(redis.replicate_commands)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = 60000000
local n = #KEYS

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

if ARGV[1] == 'a' then
  local tats = {}
  for i = 1, n do
    local limit = math.max(tonumber(ARGV[2 * i]), 1)
    local units = math.min(tonumber(ARGV[2 * i + 1]), limit)
    local tat = math.max(tat_of(KEYS[i]), now) + units * window / limit
    local ahead = tat - now
    if ahead > window then
      return {0, i, math.ceil(ahead - window)}
    end
    tats[i] = tat
  end
  local out = {1}
  for i = 1, n do
    store(KEYS[i], tats[i])
    out[i + 1] = math.floor(tats[i] - now)
  end
  return out
end

if ARGV[1] == 's' then
  for i = 1, n do
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
