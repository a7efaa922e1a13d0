package main

import (
	"log/slog"
	"reflect"
	"slices"
	"testing"
)

// TestInstallCarriesEveryAgentFlag: a field added to AgentConfig must be carried
// into the service's configuration by installEnv (or refused there), or an
// installed agent would silently lose it.
func TestInstallCarriesEveryAgentFlag(t *testing.T) {
	t.Parallel()
	typ := reflect.TypeOf(AgentConfig{})
	for i := range typ.NumField() {
		if name := typ.Field(i).Name; !slices.Contains(installedAgentFields, name) {
			t.Errorf("AgentConfig.%s is not handled by installEnv (forge agent install)", name)
		}
	}
}

// TestLogLevelOf: the event log gets each line at its level.
func TestLogLevelOf(t *testing.T) {
	t.Parallel()
	for line, want := range map[string]slog.Level{
		`time=2026-01-01T00:00:00Z level=ERROR msg="cannot poll"`:   slog.LevelError,
		`time=2026-01-01T00:00:00Z level=WARN msg="slowing down"`:   slog.LevelWarn,
		`time=2026-01-01T00:00:00Z level=INFO msg="using saved"`:    slog.LevelInfo,
		`{"time":"2026-01-01T00:00:00Z","level":"ERROR","msg":"x"}`: slog.LevelError,
		`time=2026-01-01T00:00:00Z level=INFO msg="level=ERROR"`:    slog.LevelInfo,
	} {
		if got := logLevelOf(line); got != want {
			t.Errorf("logLevelOf(%s) = %v, want %v", line, got, want)
		}
	}
}
