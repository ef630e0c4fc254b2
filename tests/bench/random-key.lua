-- wrk script of the kg_remote_first scenario (tests/bench/bench.py): a new random API key on every
-- request, so that every request is a keygate cache miss that calls the key service.
-- Seeded from /dev/urandom: unseeded, every wrk run would repeat the keys of the previous one
-- (and hit keygate's negative cache).
local f = assert(io.open("/dev/urandom", "rb"))
local bytes = f:read(6)
f:close()
local seed = 0
for i = 1, #bytes do
   seed = seed * 256 + bytes:byte(i)
end
math.randomseed(seed)

request = function()
   return wrk.format(nil, nil, {["X-API-Key"] = "kg_rand_" .. math.random(1e9) .. math.random(1e9)})
end
