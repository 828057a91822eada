-- toplevel_loop.lua: loading runs under the instruction limit too
local n = 0
while true do n = n + 1 end
return { name = "toplevel_loop", on = { "test" }, evaluate = function() end }
