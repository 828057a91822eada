-- bad_field.lua: a typo in a decision field is an error, not ignored
return {
  name = "bad_field",
  on = { "test" },
  evaluate = function(event, ctx)
    return { action = "kill", scope = "sku:A", reason = "x", halt_sale = true }
  end,
}
