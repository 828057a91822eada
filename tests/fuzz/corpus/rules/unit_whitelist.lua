-- whitelist.lua: what the sandbox offers, and what it does not
return {
  name = "whitelist",
  on = { "test" },
  evaluate = function(event, ctx)
    local missing, leaked = {}, {}
    for _, n in ipairs({ "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select", "tonumber", "tostring", "type", "unpack", "rawequal", "rawlen", "rawget", "setmetatable", "getmetatable", "string", "table", "math", "utf8", "os", "log" }) do
      if _G[n] == nil then missing[#missing + 1] = n end
    end
    for _, n in ipairs({ "io", "debug", "package", "require", "load", "loadstring", "loadfile", "dofile", "collectgarbage", "print", "rawset", "module", "setfenv", "getfenv", "coroutine", "warn" }) do
      if _G[n] ~= nil then leaked[#leaked + 1] = n end
    end
    for _, n in ipairs({ "execute", "exit", "getenv", "remove", "rename", "tmpname", "setlocale" }) do
      if os[n] ~= nil then leaked[#leaked + 1] = "os." .. n end
    end
    if string.dump ~= nil then leaked[#leaked + 1] = "string.dump" end
    if getmetatable("") ~= false then leaked[#leaked + 1] = "string metatable" end
    if os.time() < 1e9 or type(os.date("!%Y")) ~= "string" or type(os.clock()) ~= "number" then missing[#missing + 1] = "os.*" end
    log("debug", "whitelist checked")
    return { action = "alert", level = "info", reason = "missing=" .. table.concat(missing, ",") .. " leaked=" .. table.concat(leaked, ",") }
  end,
}
