-- sale_policy.lua: a sale-time policy: reject is allowed here
return {
  name = "sale_policy",
  on = { "sale_request" },
  evaluate = function(event, ctx)
    if (event.qty or 0) > 10 then
      return { action = "reject", reason = "at most 10 per order" }
    end
  end,
}
