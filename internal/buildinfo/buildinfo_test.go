package buildinfo_test

import (
	"runtime/debug"
	"testing"

	"github.com/orange-forge/forge/internal/buildinfo"
)

func TestFromBuildInfo(t *testing.T) {
	t.Parallel()
	vcs := []debug.BuildSetting{{Key: "vcs.revision", Value: "b97737a1d2c3"}, {Key: "vcs.modified", Value: "true"}}
	cases := []struct {
		name  string
		bi    debug.BuildInfo
		stamp string
		want  buildinfo.Info
	}{
		{"release stamp wins", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: buildinfo.ModulePath, Version: "v0.0.0-20261202034439-b97737a1d2c3"}, Settings: vcs},
			"1.2.3", buildinfo.Info{Version: "1.2.3", Revision: "b97737a1d2c3", Modified: true, GoVersion: "go1.26.8"}},
		{"go build of a tag", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: buildinfo.ModulePath, Version: "v1.4.0"}},
			"", buildinfo.Info{Version: "1.4.0", GoVersion: "go1.26.8"}},
		{"go build between tags", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: buildinfo.ModulePath, Version: "v0.0.0-20261202034439-b97737a1d2c3+dirty"}, Settings: vcs},
			"", buildinfo.Info{Version: "0.0.0-20261202034439-b97737a1d2c3+dirty", Revision: "b97737a1d2c3", Modified: true, GoVersion: "go1.26.8"}},
		{"go test or go run", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: buildinfo.ModulePath, Version: "(devel)"}},
			"", buildinfo.Info{Version: "dev", GoVersion: "go1.26.8"}},
		{"a library of another program", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "example.com/app", Version: "v3.0.0"},
			Deps: []*debug.Module{{Path: "connectrpc.com/connect", Version: "v1.21.1"}, {Path: buildinfo.ModulePath, Version: "v1.5.2"}}},
			"", buildinfo.Info{Version: "1.5.2", GoVersion: "go1.26.8"}},
		{"a replaced library", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "example.com/app"},
			Deps: []*debug.Module{{Path: buildinfo.ModulePath, Version: "v1.5.2", Replace: &debug.Module{Path: "../forge", Version: "(devel)"}}}},
			"", buildinfo.Info{Version: "dev", GoVersion: "go1.26.8"}},
	}
	for _, c := range cases {
		if got := buildinfo.FromBuildInfo(&c.bi, c.stamp); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
}

// TestGetInTest: a test binary records no version (go test does not stamp one).
func TestGetInTest(t *testing.T) {
	t.Parallel()
	got := buildinfo.Get()
	if got.Version != "dev" || got.GoVersion == "" {
		t.Fatalf("Get() = %+v, want version dev and a Go version", got)
	}
}
