-- params_write.lua: params and ctx are read-only, recursively
return {
  name = "params_write",
  on = { "test" },
  evaluate = function(event, ctx)
    if event.case == "top" then ctx.params.x = 1
    elseif event.case == "nested" then ctx.params.inventory.warning_threshold = 0
    elseif event.case == "ctx" then ctx.state = {}
    elseif event.case == "meta" then setmetatable(ctx.params, {})
    end
    local keys = 0
    for _ in pairs(ctx.params) do keys = keys + 1 end
    local sum = 0
    for _, v in ipairs(ctx.params.list) do sum = sum + v end
    return { action = "alert", level = "info", reason = string.format("keys=%d len=%d sum=%d warn=%d", keys, #ctx.params.list, sum, ctx.params.inventory.warning_threshold) }
  end,
}
