package main

import (
	"context"
	"fmt"

	"github.com/orange-forge/forge/internal/buildinfo"
	"github.com/orange-forge/forge/internal/termsafe"
)

// versionLine is what `forge version` and `forge --version` print.
func versionLine() string {
	i := buildinfo.Get()
	s := "forge " + i.Version
	if i.Revision != "" {
		rev := i.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if i.Modified {
			rev += "+dirty"
		}
		s += " (" + rev + ")"
	}
	return s + " " + i.GoVersion
}

func (m *Main) runVersion(ctx context.Context, args []string) error {
	f := m.newFlags("version", "forge version: print this binary's version, the commit it was built from and its Go\ntoolchain. Agents send the same version when they register (forge agents shows it).")
	f.usage = "forge version [--json]"
	jsonOut := f.FlagSet.Bool("json", false, "print JSON")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := f.noArgs(); err != nil {
		return err
	}
	if *jsonOut {
		i := buildinfo.Get()
		return m.writeJSON(termsafe.Printer{}, map[string]any{"version": i.Version, "revision": i.Revision, "modified": i.Modified, "goVersion": i.GoVersion})
	}
	_, err := fmt.Fprintln(m.Stdout, versionLine())
	return err
}
