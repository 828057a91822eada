-- bad_return.lua: evaluate returns something that is not a decision
return {
  name = "bad_return",
  on = { "test" },
  evaluate = function(event, ctx)
    return "kill everything"
  end,
}
