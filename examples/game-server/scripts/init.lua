-- The game's shop, running inside the game server (game.c embeds paygate).
-- The game calls store.lua's exported functions directly (no HTTP); WeChat Pay's
-- notifications arrive over the game's own HTTP port; paid items are handed to the game
-- through host.deliver, a C function of the game server. The money steps are lualib/shop.
require "schema"     -- the shop's tables, players, items (migrations)
require "store"      -- login and buy, called by the game; price changes, sent by the game
require "notify"     -- WeChat Pay's notifications
require "delivery"   -- paid order → host.deliver, exactly once; the shop's other jobs
