-- wrk script for POST /run/greetN with a JSON body and the bearer token (bench/run.py).
--
--   wrk -t2 -c16 -s bench/post.lua http://127.0.0.1:PORT -- TASKS_PER_THREAD TOKEN
--
-- funtask runs one job per task at a time (a second one gets 409 busy), so
-- each connection must use a task nobody else is using. Thread k owns tasks
-- k*TASKS_PER_THREAD .. (k+1)*TASKS_PER_THREAD-1 (run with connections ==
-- threads * TASKS_PER_THREAD). A request takes a free task from the thread's
-- list; its response, whose data names the task ("name":"gN"), gives it back.
-- The floors always answer "g0"; they ignore the path, so that is harmless.

local next_thread = 0

function setup(thread)
   thread:set("thread_index", next_thread)
   next_thread = next_thread + 1
end

local free = {}
local headers = {}
local fallback = 0

function init(args)
   local per_thread = tonumber(args[1]) or 8
   headers["Authorization"] = "Bearer " .. (args[2] or "")
   headers["Content-Type"] = "application/json"
   for i = per_thread - 1, 0, -1 do
      free[#free + 1] = thread_index * per_thread + i
   end
   fallback = thread_index * per_thread
end

function request()
   local n = table.remove(free) or fallback
   return wrk.format("POST", "/run/greet" .. n, headers, '{"params":{"name":"g' .. n .. '"}}')
end

function response(status, response_headers, body)
   -- A 409 (the task still busy with a job of an earlier wrk run, whose connection
   -- wrk closed mid-request) names the task too: give it back rather than fall back.
   local n = body:match('"name":"g(%d+)"') or body:match('"task":"greet(%d+)"')
   free[#free + 1] = tonumber(n) or fallback
end
