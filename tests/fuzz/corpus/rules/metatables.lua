local ro = setmetatable({}, { __index = function(t, k) return k end, __newindex = function() error("no") end })
return {
  name = "metatables",
  on = { "test" },
  evaluate = function(event, ctx)
    local ok, err = pcall(function() ctx.params.x = 1 end)
    local t = setmetatable({}, { __close = function() end, __tostring = function() return "T" end })
    do local c <close> = t end
    return { action = "alert", level = "critical", reason = tostring(t) .. tostring(ok) .. ro.z .. #ctx.params }
  end,
}
