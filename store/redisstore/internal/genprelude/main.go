// Command genprelude writes the Lua prelude of redisstore's scripts (see package
// luaprelude) to the file named by -o. `go generate ./store/redisstore` runs it.
package main

import (
	"flag"
	"log"
	"os"

	"github.com/orange-forge/forge/store/redisstore/internal/luaprelude"
)

func main() {
	out := flag.String("o", "prelude.lua", "the file to write")
	flag.Parse()
	if err := os.WriteFile(*out, luaprelude.Source(), 0o644); err != nil {
		log.Fatal(err)
	}
}
