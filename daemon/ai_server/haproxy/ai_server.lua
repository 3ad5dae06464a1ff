-- ai_server.lua: the two things haproxy.cfg asks Lua for. Copied verbatim into the state dir
-- (haproxy/lua.py); nothing in it is generated, and nothing a user wrote reaches it. What
-- changes while HAProxy runs reaches it through variables that haproxy.cfg sets:
--   proc.ais_hold_ms   how long a request may wait for a restarting engine (global set-var)
--   proc.ais_scan_ms   how much CPU time the model check may take on one body (global set-var)
--   proc.ais_ollama    1 when names compare as Ollama's, with its implicit ":latest"
--   txn.model_rules    the allowlist's {model} rules as prefix|suffix pairs (model-paths.map)
--
-- Loaded by plain Lua 5.3 (no `core`), it only returns its pure functions, for the tests.

local find, byte, sub, lower, concat = string.find, string.byte, string.sub, string.lower, table.concat

local M = {}

-- No search below runs over more than a bounded stretch of the body between two questions
-- to `late()`: one search is a C call the budget cannot cut nor HAProxy's forced yield
-- interrupt, and a 32 MiB body with no delimiter in it (`{` and 32 MiB of `x`) was one search
-- of 0.4 s, holding every other request on the thread (attacker's finding C on issue 16).

-- The next structural character ({ } [ ] ") at or after `pos`, or nil: one memchr-fast plain
-- search per character, each kept until the scan passes it, so every byte is searched once
-- per character, with nothing copied. A class search ('[{}%[%]"]') tries the class at every
-- byte: 13 ms a MiB, where a plain search is well under 1.
local huge = math.huge

local function delimiters(s)
  local o, c, lo, lc, q = 0, 0, 0, 0, 0   -- the next of each, huge when none is left
  return function(pos)
    if o < pos then o = find(s, "{", pos, true) or huge end
    if c < pos then c = find(s, "}", pos, true) or huge end
    if lo < pos then lo = find(s, "[", pos, true) or huge end
    if lc < pos then lc = find(s, "]", pos, true) or huge end
    if q < pos then q = find(s, '"', pos, true) or huge end
    local best = o
    if c < best then best = c end
    if lo < best then best = lo end
    if lc < best then best = lc end
    if q < best then best = q end
    if best ~= huge then return best end
  end
end

-- The first byte at or after `i` that is not JSON whitespace, or nil; nil, "slow" when
-- `spent` says the time is up. A short run is stepped over byte by byte; a long one is
-- searched in windows that double up to 64 KiB, `spent` asked after each.
local WS = { [32] = true, [9] = true, [13] = true, [10] = true }
local WINDOW = 64 * 1024

local function skip_ws(s, i, spent)
  for _ = 1, 8 do
    local b = byte(s, i)
    if not b then return nil end
    if not WS[b] then return i end
    i = i + 1
  end
  local size = 256
  while i <= #s do
    local k = find(sub(s, i, i + size - 1), "[^ \t\r\n]")
    if k then return i + k - 1 end
    i = i + size
    if spent(size) then return nil, "slow" end
    if size < WINDOW then size = size * 2 end
  end
  return nil
end

-- The closing quote of the JSON string whose opening quote is at i, and the quotes and
-- backslashes it stepped over (the caller's work to count): the next quote not escaped by an
-- odd run of backslashes. nil when the string never ends, or nil, "slow" when `late()` (asked
-- every 4096 quotes or backslashes) says the time is up: one string can be the whole body,
-- all escaped quotes.
local function string_end(s, i, late)
  local j, turns = i + 1, 0
  while true do
    local q = find(s, '"', j, true)
    if not q then return nil end
    local k = q - 1
    while byte(s, k) == 92 do
      k = k - 1
      turns = turns + 1
      if turns % 4096 == 0 and late() then return nil, "slow" end
    end
    if (q - 1 - k) % 2 == 0 then return q, turns end
    j = q + 1
    turns = turns + 1
    if turns % 4096 == 0 and late() then return nil, "slow" end
  end
end

-- `late()` asked once per WORK units of work: a token, a quote or backslash stepped over, a
-- byte unescaped. Counting tokens alone let a body of short strings, each full of escapes,
-- run a second past the budget between two questions (attacker's finding on issue 16).
local WORK = 4096

local function meter(late)
  local work, next_check = 0, WORK
  return function(n)
    work = work + n
    if work < next_check then return false end
    next_check = work + WORK
    return late()
  end
end

-- What is unescaped is short: a key longer than this cannot read "model" or "name" (each
-- letter at most a 6-byte \uXXXX escape), nor a value longer than MAX_VALUE a model name
-- (256 ASCII characters at most), so neither is copied or unescaped. Unescaping a 32 MiB key
-- took seconds and hundreds of MiB here.
local MAX_KEY, MAX_VALUE = 30, 6 * 256

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

-- A JSON string's content, unescaped as Go's decoder does it (a lone surrogate becomes
-- U+FFFD); nil when an escape is malformed, which Go refuses too.
function M.unescape(raw)
  local out, i, n = {}, 1, #raw
  while i <= n do
    local b = find(raw, "\\", i, true)
    if not b then out[#out + 1] = sub(raw, i); break end
    out[#out + 1] = sub(raw, i, b - 1)
    local c = sub(raw, b + 1, b + 1)
    if c == "u" then
      local hex = sub(raw, b + 2, b + 5)
      if not find(hex, "^%x%x%x%x$") then return nil end
      local code = tonumber(hex, 16)
      i = b + 6
      if code >= 0xD800 and code <= 0xDFFF then
        local low = code <= 0xDBFF and sub(raw, i, i + 1) == "\\u" and tonumber(sub(raw, i + 2, i + 5), 16)
        if low and find(sub(raw, i + 2, i + 5), "^%x%x%x%x$") and low >= 0xDC00 and low <= 0xDFFF then
          code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
          i = i + 6
        else
          code = 0xFFFD
        end
      end
      out[#out + 1] = utf8.char(code)
    elseif ESCAPES[c] then
      out[#out + 1] = ESCAPES[c]
      i = b + 2
    else
      return nil
    end
  end
  return concat(out)
end

-- `kinds`, the distinct names a request gave so far as M.normalize compares them (false: one
-- that is no name), with `name` added: at most two, and the scan stops at the second (two
-- different names are refused whatever else the body holds). Only the first name and the one
-- that differs are kept: every distinct name once, up to 1536 bytes each and outside the
-- memory HAProxy gives Lua, took it out of memory and the worker down (attacker's finding F1).
local function add_kind(kinds, name, ollama)
  local kind = M.normalize(name, ollama) or false
  if #kinds == 0 or kinds[1] ~= kind then kinds[#kinds + 1] = kind end
  return #kinds > 1
end

-- The values of the body's top-level "model" and "name" keys, compared without case and
-- after unescaping (Go matches a key to a field that way, and keeps the last of two), added
-- to `kinds` (the path's names, or {}): `kinds`, holding at most two, or nil and why not.
-- `late()` is asked after every WORK units of work whether the time is up.
-- Keys are read at every depth-1 position, after the first value too: what Go ignores is
-- judged anyway, so nothing an engine might read escapes the check.
function M.body_models(body, late, ollama, kinds)
  kinds = kinds or {}
  local spent = meter(late)
  local first, why = skip_ws(body, 1, spent)
  if why then return nil, why end
  if not first or byte(body, first) ~= 123 then return kinds end  -- not a JSON object: names nothing
  if #kinds > 1 then return kinds end
  local depth, pos = 0, first
  local next_delimiter = delimiters(body)
  while true do
    local s = next_delimiter(pos)
    if not s then break end
    if spent(1) then return nil, "slow" end
    local c = byte(body, s)
    if c == 34 then
      local e, turns = string_end(body, s, late)
      if not e then return nil, turns or "the request body is not valid JSON" end
      if spent(turns) then return nil, "slow" end
      pos = e + 1
      if depth == 1 and e - s - 1 <= MAX_KEY then
        local colon, cwhy = skip_ws(body, pos, spent)
        if cwhy then return nil, cwhy end
        if colon and byte(body, colon) == 58 then
          local key = sub(body, s + 1, e - 1)
          if find(key, "\\", 1, true) then
            if spent(#key) then return nil, "slow" end
            key = M.unescape(key) or ""
          end
          key = lower(key)
          if key == "model" or key == "name" then
            local v, vwhy = skip_ws(body, colon + 1, spent)
            if vwhy then return nil, vwhy end
            if v and byte(body, v) == 34 then
              local ve, vturns = string_end(body, v, late)
              if not ve then return nil, vturns or "the request body is not valid JSON" end
              if spent(vturns) then return nil, "slow" end
              -- Too long to be a name: kept as one that is none, so the body is refused.
              local value = ve - v - 1 <= MAX_VALUE and sub(body, v + 1, ve - 1) or ""
              if find(value, "\\", 1, true) then
                if spent(#value) then return nil, "slow" end
                value = M.unescape(value)
              end
              if not value then return nil, "the model name has a malformed escape" end
              -- Comparing a name is work on each of its bytes, not one unit.
              if spent(#value) then return nil, "slow" end
              if add_kind(kinds, value, ollama) then return kinds end
              pos = ve + 1
            elseif v and sub(body, v, v + 3) ~= "null" then
              return nil, "the model must be a string"
            end
          end
        end
      end
    elseif c == 123 or c == 91 then
      depth = depth + 1
      pos = s + 1
    else
      depth = depth - 1
      pos = s + 1
    end
  end
  return kinds
end

-- A model name as the proxy compares it (access/clients.normalize_model does the same):
-- lower case, at most 256 characters of [a-z0-9._:/-], and for Ollama ":latest" when no tag.
function M.normalize(name, ollama)
  name = lower(name)
  if #name == 0 or #name > 256 or not find(name, "^[a-z0-9%._:/%-]+$") then return nil end
  if ollama then
    -- A tag is a ":" after the last "/". Plain searches: the pattern ":[^/]*$" backtracks,
    -- 32,000 steps for 255 colons and a "/", and a body of such names held the proxy's one
    -- thread 8 s (attacker's pass 10).
    local last, at = 0, find(name, "/", 1, true)
    while at do
      last = at
      at = find(name, "/", at + 1, true)
    end
    if not find(name, ":", last + 1, true) then name = name .. ":latest" end
  end
  return name
end

-- One segment of a model name, as the allowlist's {model} allows it.
local function segment_ok(seg)
  return find(seg, "^[%w_][%w%._:%-]*$") ~= nil
end

-- The {model} segments of `path` for a rule's prefix and suffix, or nil.
function M.path_model(path, prefix, suffix)
  if #path <= #prefix + #suffix or sub(path, 1, #prefix) ~= prefix or sub(path, #path - #suffix + 1) ~= suffix then
    return nil
  end
  local middle = sub(path, #prefix + 1, #path - #suffix)
  local count = 0
  for seg in string.gmatch(middle .. "/", "([^/]*)/") do
    count = count + 1
    if count > 4 or not segment_ok(seg) then return nil end
  end
  return middle
end

-- model-paths.map's one value ("prefix|suffix,prefix|suffix", or "-") as a list of pairs.
function M.rules(text)
  local rules = {}
  for prefix, suffix in string.gmatch(text or "", "([^|,]*)|([^|,]*)") do rules[#rules + 1] = { prefix, suffix } end
  return rules
end

-- The verdict on one request: "ok" and the model it names (nil: none), "two" (it names two
-- different models), "bad" and why (it cannot name one: not JSON, not a string, not a
-- name), or "slow" (it could not be read in time). Every name the path and body give counts.
-- Two different names are "two" as soon as the second is read, before the rest of the body.
function M.judge(path, body, rules, ollama, late)
  local kinds = {}
  for _, rule in ipairs(rules) do
    local found = M.path_model(path, rule[1], rule[2])
    if found and add_kind(kinds, found, ollama) then return "two" end
  end
  if body and #body > 0 then
    local problem
    kinds, problem = M.body_models(body, late, ollama, kinds)
    if not kinds then
      if problem == "slow" then return "slow" end
      return "bad", problem
    end
  end
  if #kinds == 0 then return "ok", nil end
  if #kinds > 1 then return "two" end
  if not kinds[1] then return "bad", "not a model name (letters, digits, . _ : / -)" end
  return "ok", kinds[1]
end

if core == nil then return M end

-- In HAProxy. One Lua state per thread (lua-load-per-thread), so a long body read on one
-- thread never waits for another's.

local hold = Map.new("hold.map", Map._str)

-- While the engine restarts, requests wait here (the supervisor flips hold.map).
core.register_action("ai_server_hold", { "http-req" }, function(txn)
  local limit = tonumber(txn:get_var("proc.ais_hold_ms")) or 0
  local waited = 0
  while hold:lookup("hold") == "1" and waited < limit do
    core.msleep(50)
    waited = waited + 50
  end
end, 0)

-- The model, into txn.model, and the verdict into txn.model_verdict. haproxy.cfg refuses a
-- request whose verdict was never set (this action failed or was cut short): the default is
-- refusal, never a pass.
-- The budget is the process's CPU time (os.clock), not core.now(): that is the time HAProxy
-- last read its clock, which it does between tasks, and a scan that does not give the thread
-- back for long read one time throughout, across its own yields too (attacker's passes 9
-- and 10: 200 MiB of whitespace judged in 2.7 s, bodies of slow names in 16 s, against a 1 s
-- budget; HAProxy's own Lua timeout, on the same clock, never fired either). On the one
-- thread, CPU time while the scan runs is the time it holds the others up; what the others
-- spend while it yields counts against it too, which errs toward refusing. `late()` yields
-- whenever it is asked, so the requests waiting on the thread run between two stretches.
local clock = os.clock

local function deadline_after(budget_ms)
  local deadline = clock() + budget_ms / 1000
  return function()
    core.yield()
    return clock() > deadline
  end
end

core.register_action("ai_server_model", { "http-req" }, function(txn)
  local budget = tonumber(txn:get_var("proc.ais_scan_ms")) or 0
  local verdict, detail = M.judge(txn.f:path() or "", txn.f:req_body(), M.rules(txn:get_var("txn.model_rules")),
                                  txn:get_var("proc.ais_ollama") == 1, deadline_after(budget))
  if verdict == "ok" and detail then txn:set_var("txn.model", detail) end
  if verdict == "bad" then txn:set_var("txn.model_problem", detail) end
  txn:set_var("txn.model_verdict", verdict)
end, 0)
