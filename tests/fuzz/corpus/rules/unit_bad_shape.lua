-- bad_shape.lua: every field wrong
return {
  name = "has spaces",
  on = {},
  evalute = function(event, ctx) end,
  tests = 7,
}
