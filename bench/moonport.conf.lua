-- The benchmark's routes on top of the apps directory given on the command
-- line (bench/run serves apps/ and this): /broadcast for the fan-out test.
return {
  routes = { ["/broadcast"] = "apps/broadcast.lua" },
}
