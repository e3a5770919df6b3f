-- The merchant's scripts start here. Each file below declares routes, jobs and migrations.
require "hello"
