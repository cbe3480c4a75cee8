-- Atomic reservation (taskcore/reliable_redis.py): pop and record in kombu's unacked, one step.
-- KEYS: the queue lists in the order to take from, the bells, unacked, its index, then for
-- each queue list the refused list of its queue, then for each queue list its delayed set,
-- then the guard key.
-- ARGV: number of queue lists, number of bells, most messages to take, now, most bells kept,
-- then the tags acknowledged since the last call (removed first).
-- Called by EVALSHA (the script is loaded once per connection, not sent with every call).
-- Returns {refused count, earliest due time of a delayed message left or false, key1,
-- message1, ...}; unacked entries as kombu's QoS.append writes.
-- An entry that is not a kombu message is not handed out: a record {refused_reason, message}
-- goes to its queue's refused list (taskcore.deadletters stores it as a dead letter).
local n_queues, n_bells = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, now, max_bells = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local unacked, index = KEYS[n_queues + n_bells + 1], KEYS[n_queues + n_bells + 2]
local refused_keys = n_queues + n_bells + 2
local delayed_keys = refused_keys + n_queues
local KEPT_BYTES = 65536
-- A Redis out of memory (maxmemory, noeviction) refuses a command that may grow memory
-- only until a script has written: after a pop, the unacked write would go through.
-- So the first command is such a command (a no-op once the key exists): while Redis
-- refuses writes the whole script is refused before it takes anything.
redis.call('SETNX', KEYS[delayed_keys + n_queues + 1], '1')
for a = 6, #ARGV do
    redis.call('ZREM', index, ARGV[a])
    redis.call('HDEL', unacked, ARGV[a])
end
-- Delayed messages (countdown, ETA, retry backoff) wait in a sorted set scored by their
-- due time; those due now join the consuming end of their list, each exactly once.
local next_due = false
for i = 1, n_queues do
    local delayed = KEYS[delayed_keys + i]
    local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 100)
    if #due > 0 then
        redis.call('RPUSH', KEYS[i], unpack(due))
        redis.call('ZREM', delayed, unpack(due))
    end
    local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')[2]
    if first and (not next_due or tonumber(first) < tonumber(next_due)) then next_due = first end
end
local out = {0, next_due}
local taken = 0
for i = 1, n_queues do
    local key = KEYS[i]
    while taken < limit do
        local item = redis.call('RPOP', key)
        if not item then break end
        local ok, message = pcall(cjson.decode, item)
        local properties = ok and type(message) == 'table' and message.properties
        local tag = type(properties) == 'table' and properties.delivery_tag
        local info = type(properties) == 'table' and properties.delivery_info
        if type(tag) == 'string' and type(info) == 'table' then
            redis.call('ZADD', index, now, tag)
            redis.call('HSET', unacked, tag, '[' .. item .. ',' .. cjson.encode(info.exchange)
                .. ',' .. cjson.encode(info.routing_key) .. ']')
            out[#out + 1] = key
            out[#out + 1] = item
            taken = taken + 1
        else
            local reason = ok and 'not a kombu message: no delivery tag or delivery info'
                or 'not a kombu message: not JSON'
            redis.call('LPUSH', KEYS[refused_keys + i], cjson.encode(
                {refused_reason = reason, size = #item, message = string.sub(item, 1, KEPT_BYTES)}))
            out[1] = out[1] + 1
        end
    end
end
-- Fewer taken than the limit: every queue list is empty now, and the bells rung for what
-- was taken would only wake consumers to find nothing: they go. Else other consumers may
-- be needed for what is left: at most max_bells of them wake up.
for j = 1, n_bells do
    if taken < limit then
        redis.call('DEL', KEYS[n_queues + j])
    else
        redis.call('LTRIM', KEYS[n_queues + j], 0, max_bells - 1)
    end
end
return out
