-- fuzz_rules timeout: 100000 instructions of string.rep took seconds (each
-- call writes 65536 bytes one at a time). Fixed: allocations are charged
-- against the instruction budget (engine/rules_sandbox.c, charge()).
return {
  name = "churn",
  on = { "test" },
  evaluate = function(event, ctx)
    local t = {}
    while true do t[0] = string.rep("x", 65536) .. #t end
  end,
}
