-- dup_a.lua: first of two rules with one name
return {
  name = "dup",
  on = { "test" },
  evaluate = function(event, ctx) end,
}
