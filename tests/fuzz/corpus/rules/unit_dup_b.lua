-- dup_b.lua: second of two rules with one name
return {
  on = { "test" },
  name = "dup",
  evaluate = function(event, ctx) end,
}
