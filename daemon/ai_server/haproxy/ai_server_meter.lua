-- ai-server's metering filter (haproxy/meter.py says what and why). A file of the package,
-- copied as it is into the state dir: nothing in it is generated. What it is told comes as
-- the filter's arguments in haproxy.cfg (`filter lua.ai_server_meter MAX_JSON STARTS`):
-- the largest non-streamed answer it reads, and the file its start lines go to; and, for each
-- answer, its status and headers in txn.meter_head (metering.py's http-response rule).
-- It reads the engine's answer as it passes and changes none of it.
-- JSON path -> the short code a count is reported under (observe/usage/meter.py NAMES;
-- haproxy/meter.py COUNTERS, which tests/unit/test_meter_lua.py holds this to).
local COUNTERS = {
  ["done"] = "dn",
  ["eval_count"] = "ec",
  ["message.usage.cache_creation_input_tokens"] = "mw",
  ["message.usage.cache_read_input_tokens"] = "mr",
  ["message.usage.input_tokens"] = "mi",
  ["message.usage.output_tokens"] = "mo",
  ["prompt_eval_count"] = "pe",
  ["response.usage.input_tokens"] = "ri",
  ["response.usage.output_tokens"] = "ro",
  ["timings.cache_n"] = "tc",
  ["timings.predicted_n"] = "td",
  ["timings.prompt_n"] = "tp",
  ["usage.cache_creation_input_tokens"] = "uw",
  ["usage.cache_read_input_tokens"] = "ur",
  ["usage.completion_tokens"] = "uc",
  ["usage.input_tokens"] = "ui",
  ["usage.output_tokens"] = "uo",
  ["usage.prompt_tokens"] = "up",
}
-- Strings that, non-empty, mean a stream event carries generated text (meter.py TEXT_PATHS).
local TEXT = {
  ["choices[].delta.content"] = "t",
  ["choices[].delta.reasoning"] = "t",
  ["choices[].delta.reasoning_content"] = "t",
  ["choices[].delta.tool_calls[].function.arguments"] = "t",
  ["choices[].delta.tool_calls[].function.name"] = "t",
  ["choices[].text"] = "t",
  ["delta"] = "t",
  ["delta.partial_json"] = "t",
  ["delta.text"] = "t",
  ["delta.thinking"] = "t",
  ["message.content"] = "t",
  ["message.thinking"] = "t",
  ["message.tool_calls[].function.name"] = "t",
  ["response"] = "t",
  ["thinking"] = "t",
}
local find, sub, byte, format, gsub = string.find, string.sub, string.byte, string.format, string.gsub
local concat = table.concat

-- Every container a wanted path runs through: only those are read, the rest skipped.
local WANT, THROUGH = {}, {}
for path, code in pairs(COUNTERS) do WANT[path] = code end
for path in pairs(TEXT) do WANT[path] = WANT[path] or "t" end
for path in pairs(WANT) do
  local at = 1
  while true do
    local s, e = find(path, "[%.%[]", at)
    if not s then break end
    THROUGH[sub(path, 1, s - 1)] = true
    if byte(path, s) == 91 then THROUGH[sub(path, 1, s + 1)] = true end
    at = e + 1
  end
end

-- The wall clock, as HAProxy's date() has it (core.now() is its monotonic clock, which drifts
-- from the date txn.t_in was read from).
local function now_us(txn)
  return txn.f:date(0, "us")
end

-- The start lines' own file (not the access log's: HAProxy writes that at its own offset, which
-- a second writer would overwrite), opened on first use (a `haproxy -c` never writes to it).
local spool
local function spool_line(name, line)
  if not spool then
    spool = io.open(name, "a")
    if not spool then return end
    spool:setvbuf("full", 8192)
  end
  spool:write(line, "\n")
  spool:flush()
end

-- JSON, read only where a wanted path goes --------------------------------------------------

local function string_end(s, i)          -- s[i] is '"': the index after its closing quote
  local j = i + 1
  while true do
    local q = find(s, '"', j, true)
    if not q then return nil end
    if byte(s, q - 1) ~= 92 then return q + 1 end
    local k, n = q - 1, 0
    while byte(s, k) == 92 do n = n + 1; k = k - 1 end
    if n % 2 == 0 then return q + 1 end
    j = q + 1
  end
end

-- s[i] is '{' or '[': the index after its match. Each structural character is found by a
-- plain (memchr) search kept until the walk passes it: a class search ("[{%[]") tries the
-- class at every byte, and a 16 MiB answer of embeddings held the proxy's one thread 0.4 s
-- (attacker's pass 9).
local huge = math.huge

local function skip(s, i)
  local depth, pos = 0, i
  local q, o, lo, c, lc = 0, 0, 0, 0, 0   -- the next '"', '{', '[', '}', ']' (huge: none left)
  while true do
    if q < pos then q = find(s, '"', pos, true) or huge end
    if o < pos then o = find(s, "{", pos, true) or huge end
    if lo < pos then lo = find(s, "[", pos, true) or huge end
    if c < pos then c = find(s, "}", pos, true) or huge end
    if lc < pos then lc = find(s, "]", pos, true) or huge end
    local open, close = o < lo and o or lo, c < lc and c or lc
    if q < open and q < close then
      pos = string_end(s, q)
      if not pos then return nil end
    elseif open < close then
      depth = depth + 1; pos = open + 1
    elseif close ~= huge then
      depth = depth - 1; pos = close + 1
      if depth == 0 then return pos end
    else
      return nil
    end
  end
end

local value

local function members(s, i, path, found)  -- s[i] is '{'
  local pos = i + 1
  while true do
    pos = find(s, "[^ \t\r\n,]", pos)
    if not pos then return nil end
    local c = byte(s, pos)
    if c == 125 then return pos + 1 end
    if c ~= 34 then return nil end
    local e = string_end(s, pos)
    if not e then return nil end
    local key = sub(s, pos + 1, e - 2)
    local colon = find(s, "[^ \t\r\n]", e)
    if not colon or byte(s, colon) ~= 58 then return nil end
    pos = find(s, "[^ \t\r\n]", colon + 1)
    if not pos then return nil end
    pos = value(s, pos, path == "" and key or path .. "." .. key, found)
    if not pos then return nil end
  end
end

local function elements(s, i, path, found)  -- s[i] is '['; path ends with []
  local pos = i + 1
  while true do
    pos = find(s, "[^ \t\r\n,]", pos)
    if not pos then return nil end
    if byte(s, pos) == 93 then return pos + 1 end
    pos = value(s, pos, path, found)
    if not pos then return nil end
  end
end

value = function(s, pos, path, found)
  local c = byte(s, pos)
  local want = WANT[path]
  if c == 123 or c == 91 then
    if want then found(path, want, "o") end
    if c == 123 and THROUGH[path] then return members(s, pos, path, found) end
    if c == 91 and THROUGH[path .. "[]"] then return elements(s, pos, path .. "[]", found) end
    return skip(s, pos)
  elseif c == 34 then
    local e = string_end(s, pos)
    if e and want then found(path, want, e - pos > 2 and "S" or "s") end
    return e
  end
  local e = find(s, "[,}%] \t\r\n]", pos) or #s + 1
  if want then
    local raw = sub(s, pos, e - 1)
    if find(raw, "^%-?%d+$") then
      found(path, want, #raw <= 15 and raw or "L")
    elseif raw == "true" or raw == "false" then
      found(path, want, raw == "true" and "T" or "b")
    elseif raw == "null" then
      found(path, want, "n")
    else
      found(path, want, "f")
    end
  end
  return e
end

-- The filter -----------------------------------------------------------------------------------

local Meter = {}
Meter.id = "ai_server_meter"
Meter.flags = filter.FLT_CFG_FL_HTX
Meter.__index = Meter

-- `self` is the class as the configuration function returned it (with max_json and starts):
-- HAProxy hands each filter declaration its own copy, so they are read from it, not from Meter.
function Meter:new()
  return setmetatable({max_json = self.max_json, starts = self.starts}, Meter)
end

local function safe(text)
  return text and gsub(text, "[^%w%.%-_:/~@]", "?") or "-"
end

function Meter:start_analyze(txn, chn)
  if not chn:is_resp() then return end
  if not txn:get_var("txn.metered") then return end
  -- The request left the queue and holds an engine slot (or a node's) from now.
  self.t0 = now_us(txn)
  self.max_ms = tonumber(txn:get_var("txn.max_ms") or 0) or 0
  self.req_bytes = tonumber(txn:get_var("txn.req_bytes") or 0) or 0
  self.counts, self.last, self.first, self.order = {}, {}, {}, {}
  self.bytes, self.events, self.texts, self.buf, self.flags = 0, 0, 0, "", ""
  local f = txn.f
  spool_line(self.starts, format("ai-server-start %s %d %s %s %s %s %s %s", safe(f:unique_id()), self.t0, safe(f:be_name()),
    safe(f:srv_name()), safe(txn:get_var("txn.client")), safe(txn:get_var("txn.model")),
    safe(txn:get_var("txn.priority")), safe(txn:get_var("txn.path"))))
  filter.register_data_filter(self, chn)
end

-- What the answer is, from its status and headers (an http-response rule puts them in
-- txn.meter_head, "status|content-type|content-encoding"), read on its first chunk or, when
-- none came, at the end. An http_headers callback instead would be one more Lua call on each
-- side of every metered request, one of them between the answer's headers and its first byte
-- (bench/meter_ablate.py: some 25 µs of time to first token).
function Meter:kind(txn)
  local head = txn:get_var("txn.meter_head")
  if not head then return nil end
  local code, kind, coding = string.match(head, "^(%d*)|([^|]*)|(.*)$")
  code, kind, coding = tonumber(code) or 0, string.lower(kind or ""), string.lower(coding or "")
  if code < 200 or code > 299 then
    self.mode = "err"
  elseif coding ~= "" and coding ~= "identity" then
    self.mode = "enc"
  elseif find(kind, "text/event-stream", 1, true) then
    self.mode = "sse"
  elseif find(kind, "ndjson", 1, true) then
    self.mode = "nd"
  elseif find(kind, "json", 1, true) then
    self.mode, self.parts, self.size = "json", {}, 0
  else
    self.mode = "raw"
  end
  return self.mode
end

-- One count seen (code, its raw value or kind): how often, first and last, still in order.
function Meter:count(code, raw)
  local n = self.counts[code]
  if not n then
    self.counts[code], self.first[code], self.last[code] = 1, raw, raw
    self.order[#self.order + 1] = code
    return
  end
  self.counts[code] = n + 1
  local last = self.last[code]
  if raw ~= last then
    local a, b = tonumber(last), tonumber(raw)
    if not (a and b and b >= a) then self.disorder = self.disorder or {}; self.disorder[code] = true end
    self.mixed = self.mixed or {}; self.mixed[code] = true
  end
  self.last[code] = raw
end

function Meter:read(txn, text)
  local pos = find(text, "[^ \t\r\n]")
  if not pos then return end
  if byte(text, pos) ~= 123 then
    if sub(text, pos, pos + 5) ~= "[DONE]" then self.bad = true end
    return
  end
  -- Counts from an event count only once all of it has read as JSON.
  local carries, seen = false, {}
  local ok = members(text, pos, "", function(path, code, raw)
    if code == "t" then
      if raw == "S" then carries = true end
    else
      seen[#seen + 1] = code
      seen[#seen + 1] = raw
    end
  end)
  if not ok then
    self.bad = true
    return
  end
  for i = 1, #seen, 2 do self:count(seen[i], seen[i + 1]) end
  self.events = self.events + 1
  if carries then
    self.texts = self.texts + 1
    if not self.t1 then self.t1 = self.when or now_us(txn) end
  end
end

-- Complete lines of a stream: NDJSON objects, or SSE `data:` payloads.
function Meter:lines(txn, final)
  local buf, at = self.buf, 1
  while true do
    local nl = find(buf, "\n", at, true)
    if not nl then break end
    local line = sub(buf, at, nl - 1)
    at = nl + 1
    if self.mode == "nd" then
      self:read(txn, line)
    elseif sub(line, 1, 5) == "data:" then
      self:read(txn, sub(line, 6))
    end
  end
  self.buf = sub(buf, at)
  if final and #self.buf > 0 then
    if self.mode == "nd" then
      self:read(txn, self.buf)
    elseif sub(self.buf, 1, 5) == "data:" then
      self:read(txn, sub(self.buf, 6))
    end
    self.buf = ""
  end
end

-- One chunk of the answer, read. `at` is when it came (nil: now), for the time to first token.
function Meter:take(txn, data, at)
  self.bytes = self.bytes + #data
  local mode = self.mode or self:kind(txn)
  self.when = at
  if mode == "sse" or mode == "nd" then
    self.buf = self.buf .. data
    self:lines(txn, false)
    if #self.buf > 1048576 then self.buf, self.bad = "", true end   -- no line is that long
  else
    if not self.t1 then self.t1 = at or now_us(txn) end
    if mode == "json" then
      self.size = self.size + #data
      if self.size <= self.max_json then self.parts[#self.parts + 1] = data else self.parts, self.big = nil, true end
    end
  end
  self.when = nil
end

-- The first chunk is only kept, with when it came, and read with the second (or at the end):
-- HAProxy sends a chunk once this returns, and the first one is the time to first token.
function Meter:http_payload(txn, msg)
  if not self.t0 or not msg.channel:is_resp() then return end
  local data = msg:body()
  if not data or #data == 0 then return end
  local now
  if self.held then
    local held = self.held
    self.held = nil
    self:take(txn, held, self.held_at)
    self:take(txn, data, nil)
  elseif not self.began then
    now = now_us(txn)
    self.held, self.held_at, self.began = data, now, true
  else
    self:take(txn, data, nil)
  end
  if self.max_ms > 0 and (now or now_us(txn)) - self.t0 > self.max_ms * 1000 then
    self.cut = true
    self:finish(txn)
    error("ai-server: this client's max_seconds is up: the generation is cut")
  end
end

function Meter:finish(txn)
  if self.done then return end
  self.done = true
  if self.held then
    local held = self.held
    self.held = nil
    self:take(txn, held, self.held_at)
  end
  if not self.mode then self:kind(txn) end
  if self.mode == "sse" or self.mode == "nd" then
    self:lines(txn, true)
  elseif self.mode == "json" and self.parts then
    self:read(txn, concat(self.parts))
    self.parts = nil
  end
  local out = {format("m=%s,q=%d,b=%d,ev=%d,tx=%d,t0=%d,t2=%d", self.mode or "none", self.req_bytes, self.bytes,
    self.events, self.texts, self.t0, now_us(txn))}
  if self.max_ms > 0 then out[#out + 1] = format("mx=%d", self.max_ms) end
  if self.t1 then out[#out + 1] = format("t1=%d", self.t1) end
  for _, code in ipairs(self.order) do
    local n = self.counts[code]
    local item = code .. "=" .. self.last[code]
    if n > 1 then
      local how = not (self.mixed and self.mixed[code]) and "=" or (self.disorder and self.disorder[code]) and "!" or "+"
      item = item .. "*" .. n .. how
    end
    out[#out + 1] = item
  end
  local flags = (self.bad and "bad." or "") .. (self.big and "big." or "") .. (self.cut and "cut." or "")
  if flags ~= "" then out[#out + 1] = "x=" .. sub(flags, 1, -2) end
  txn:set_var("txn.meter", concat(out, ","))
end

function Meter:end_analyze(txn, chn)
  if self.t0 and chn:is_resp() then self:finish(txn) end
end

-- The arguments haproxy.cfg gives: a bad one stops HAProxy at `haproxy -c`, never later.
core.register_filter("ai_server_meter", Meter, function(meter, args)
  local max_json, starts = tonumber(args[1]), args[2]
  if not max_json or max_json < 0 or not starts or not find(starts, "^[%w%._-]+$") then
    error("ai_server_meter: arguments are MAX_JSON (bytes) and the start lines' file name")
  end
  meter.max_json, meter.starts = max_json, starts
  return meter
end)
