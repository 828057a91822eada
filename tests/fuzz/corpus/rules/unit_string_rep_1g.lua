-- string_rep_1g.lua: string.rep under Lua's own size cap meets the memory limit
return {
  name = "string_rep_1g",
  on = { "test" },
  evaluate = function(event, ctx)
    local ok, s = pcall(string.rep, "x", 1e9)
    return { action = "alert", level = "info", reason = "swallowed: " .. tostring(s) }
  end,
}
