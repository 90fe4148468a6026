-- luarocks make moonport-scm-1.rockspec
-- Builds bin/moonport with the Makefile and installs the moonport command
-- and the lua/ modules (moonport.client, moonport.testing) into the tree.
-- The build needs the system libraries `make deps` installs.
rockspec_format = "3.0"
package = "moonport"
version = "scm-1"
source = {
   url = "git+https://example.invalid/moonport.git",
}
description = {
   summary = "A WebSocket application host: a C core with apps written in Lua",
   detailed = [[
moonport serves WebSocket apps written in Lua (LuaJIT). A libev core speaks
RFC 6455; each app is one Lua file that returns on_connect, on_message and
on_close handlers.]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.1",
   "luasocket", -- for moonport.client and moonport.testing
}
build = {
   type = "make",
   build_variables = {
      CFLAGS = "$(CFLAGS)",
   },
   install_variables = {
      PREFIX = "$(PREFIX)",
      BINDIR = "$(BINDIR)",
      LUADIR = "$(LUADIR)",
   },
}
