-- failing_fixture.lua: fixtures that do not hold refuse the file
return {
  name = "failing_fixture",
  on = { "test", "other" },
  evaluate = function(event, ctx)
    if event.level then
      return { action = "alert", level = event.level, reason = "level " .. event.level }
    end
  end,
  tests = {
    { channel = "test", event = { level = "info" },
      expect = { { action = "alert", level = "info" } } },
    { channel = "test", event = { level = "info" },
      expect = { { action = "alert", level = "warning" } } },
    { channel = "other", event = {},
      expect = { { action = "alert", level = "info", reason = "x" } } },
    { channel = "test", event = { level = "critical" },
      expect = {} },
    { channel = "nope", event = {}, expect = {} },
    { channel = "test", event = { level = "loud" }, expect = {} },
  },
}
