-- products.lua — wrk -s products.lua BASE_URL/api/products: a plain GET, with the report line.
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
require "report"
