-- reject_not_sale.lua: reject is for sale_request rules only
return {
  name = "reject_not_sale",
  on = { "test" },
  evaluate = function(event, ctx)
    return { action = "reject", reason = "no" }
  end,
}
