local shared = { 1, 2, 3 }
return {
  name = "state_shapes",
  on = { "inventory_events" },
  evaluate = function(event, ctx)
    local s = ctx.state
    s.self = s
    s.shared_a, s.shared_b = shared, shared
    s[1.5] = "float key"; s[true] = false; s[{}] = "table key"
    s.f = function() end
    s.deep = { { { { { { { { event } } } } } } } }
    s.str = string.rep("x", 100)
    return nil
  end,
}
