// Package buildinfo tells which forge a process runs: the version stamped at
// build, the commit and the Go toolchain. `forge version`, the version agents
// send at Register and the server's forge_build_info metric all read it here,
// so they agree.
//
// The version is, in order: what scripts/release stamps with
// -ldflags "-X github.com/orange-forge/forge/internal/buildinfo.stamped=1.2.3";
// else the main module's version that `go build` records from version control
// (a tag v1.2.3 gives 1.2.3; between tags a pseudo-version, with +dirty when the
// tree had changes); else, when forge is a library of another program, the
// version of the forge module it was built with; else "dev" (go test, go run).
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
)

// ModulePath is forge's module path.
const ModulePath = "github.com/orange-forge/forge"

// stamped is the release version, set by the linker (scripts/release).
var stamped string

// Info describes the running build.
type Info struct {
	// Version is forge's version (see the package doc); never empty.
	Version string
	// Revision is the commit the binary was built from, when the build recorded
	// it (a `go build` of a git checkout); empty otherwise.
	Revision string
	// Modified is true when the tree had uncommitted changes at build.
	Modified bool
	// GoVersion is the Go toolchain that built the binary.
	GoVersion string
}

// Get returns the running build's Info.
func Get() Info { return get() }

var get = sync.OnceValue(func() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: orDev(stamped), GoVersion: runtime.Version()}
	}
	return FromBuildInfo(bi, stamped)
})

// FromBuildInfo derives an Info from a build's recorded information and the
// release stamp (empty when none), by the rules of the package doc.
func FromBuildInfo(bi *debug.BuildInfo, stamp string) Info {
	info := Info{GoVersion: bi.GoVersion}
	if info.GoVersion == "" {
		info.GoVersion = runtime.Version()
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	switch {
	case stamp != "":
		info.Version = stamp
	case bi.Main.Path == ModulePath:
		info.Version = moduleVersion(&bi.Main)
	default:
		for _, d := range bi.Deps {
			if d.Path == ModulePath {
				info.Version = moduleVersion(d)
			}
		}
	}
	info.Version = orDev(info.Version)
	return info
}

// moduleVersion is a module's version without the leading v (v1.2.3 is 1.2.3,
// as release packages name it), or empty when the build recorded none.
func moduleVersion(m *debug.Module) string {
	if m.Replace != nil {
		m = m.Replace
	}
	if m.Version == "" || m.Version == "(devel)" {
		return ""
	}
	return strings.TrimPrefix(m.Version, "v")
}

func orDev(v string) string {
	if v == "" {
		return "dev"
	}
	return v
}
