return {
  name = "patterns",
  on = { "x" },
  evaluate = function(event, ctx)
    local s = string.format("%q %5.2f %d", tostring(event.sku), 1.5, 3)
    for w in s:gmatch("%a+") do s = s:gsub(w, w:upper(), 1) end
    local t = {}
    for i = 1, 10 do t[#t + 1] = utf8.char(i * 1000) end
    table.sort(t, function(a, b) return a > b end)
    return { action = "alert", level = "info", reason = table.concat(t, ",") .. s:sub(1, 10) .. os.date("!%Y", 0) .. math.floor(3.7) }
  end,
}
