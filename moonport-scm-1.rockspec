-- luarocks make moonport-scm-1.rockspec
-- Builds bin/moonport with the Makefile and installs the moonport command
-- and the lua/ modules (moonport.client, moonport.testing) into the tree.
-- The build needs the system libraries `make deps` installs. moonport embeds
-- LuaJIT whatever Lua luarocks runs on, and the two modules run on Lua 5.1
-- to 5.4, so the rock installs for luarocks' own Lua (the one busted runs
-- on); luarocks only insists on that Lua's headers (liblua5.2-dev on Debian
-- 12, which `make deps-test` installs).
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
-- moonport.client and moonport.testing need luasocket; on Debian it comes
-- from the lua-socket package, which luarocks does not see as a rock, so it
-- is not listed here (`make deps-test` installs it). The same goes for
-- lua-cjson, the JSON library apps `require "cjson"` for: Debian's
-- lua-cjson registers no rock in any luarocks manifest, and listing
-- "lua-cjson" would send luarocks to luarocks.org for a second copy (built
-- for luarocks' Lua, not for moonport's LuaJIT) or fail offline; `make deps`
-- installs it.
dependencies = {
   "lua >= 5.1",
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
