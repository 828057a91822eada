-- not_table.lua: a rule file must return a table
return 42
