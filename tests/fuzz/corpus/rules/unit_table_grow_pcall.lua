-- table_grow_pcall.lua: a pcall must not swallow the memory-limit abort
return {
  name = "table_grow_pcall",
  on = { "test" },
  evaluate = function(event, ctx)
    local ok, err = pcall(function() local t = {} while true do t[#t + 1] = string.rep("x", 65536) .. #t end end)
    return { action = "alert", level = "info", reason = "swallowed: " .. tostring(err) }
  end,
}
