package service_test

import (
	"encoding/xml"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orange-forge/forge/internal/service"
)

var update = flag.Bool("update", false, "rewrite packaging/forge-agent.service from service.SystemdUnit")

const packagedUnit = "../../packaging/forge-agent.service"

// TestPackagedUnit: the unit the packages ship is the one `forge agent install`
// writes, for /usr/bin/forge. Run with -update after changing the unit.
func TestPackagedUnit(t *testing.T) {
	want := service.SystemdUnit("/usr/bin/forge")
	if *update {
		if err := os.WriteFile(packagedUnit, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(packagedUnit)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s differs from service.SystemdUnit(\"/usr/bin/forge\"): go test ./internal/service -run TestPackagedUnit -update", packagedUnit)
	}
}

// TestSystemdUnit: what the unit promises an operator, line by line.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	unit := service.SystemdUnit("/opt/forge/bin/forge")
	for _, line := range []string{
		"ExecStart=/opt/forge/bin/forge agent",
		"User=forge",
		"EnvironmentFile=/etc/forge/agent.env",
		"Environment=FORGE_STATE_DIR=/var/lib/forge-agent FORGE_ENROLL_TOKEN_FILE=/etc/forge/enroll-token",
		"StateDirectory=forge-agent",
		"StateDirectoryMode=0700",
		"Restart=on-failure",
		"RestartPreventExitStatus=2 3",
		"KillMode=mixed", // SIGTERM to the agent alone: a drain
		"TimeoutStopSec=90s",
		"NoNewPrivileges=yes",
		"WantedBy=multi-user.target",
	} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("the unit has no line %q", line)
		}
	}
	// Options that would break what commands do as the forge user.
	for _, opt := range []string{"ProtectSystem=", "ProtectHome=", "SystemCallFilter=", "MemoryDenyWriteExecute=", "PrivateDevices=", "PrivateNetwork=", "IPAddressDeny="} {
		if strings.Contains(unit, "\n"+opt) {
			t.Errorf("the unit sets %s, which breaks commands", opt)
		}
	}
}

// TestEnvFileContent: values are quoted for systemd, one line each, and a value
// that cannot be one line is refused.
func TestEnvFileContent(t *testing.T) {
	t.Parallel()
	got, err := service.EnvFileContent(map[string]string{
		"FORGE_SERVER": "https://forge.example.com", "FORGE_LABEL": "env=prod,role=web", "FORGE_NAME": `a "b" \c $d #e`,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "FORGE_LABEL=\"env=prod,role=web\"\nFORGE_NAME=\"a \\\"b\\\" \\\\c $d #e\"\nFORGE_SERVER=\"https://forge.example.com\"\n"
	if !strings.HasSuffix(got, want) || !strings.HasPrefix(got, "# ") {
		t.Fatalf("EnvFileContent =\n%s\nwant comments, then\n%s", got, want)
	}
	if _, err := service.EnvFileContent(map[string]string{"FORGE_NAME": "two\nlines"}); err == nil {
		t.Fatal("a value with a newline was accepted")
	}
}

// TestLaunchdPlist: a well-formed property list that runs `forge agent` with the
// configuration, restarts it on failure and gives its drain time.
func TestLaunchdPlist(t *testing.T) {
	t.Parallel()
	p := service.LaunchdPlist("/usr/local/bin/forge", map[string]string{"FORGE_SERVER": "https://f.example/?a=1&b=<2>"}, "")
	dec := xml.NewDecoder(strings.NewReader(p))
	dec.Strict = true
	for {
		_, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the plist is not well-formed XML: %v\n%s", err, p)
		}
	}
	for _, s := range []string{
		"<string>/usr/local/bin/forge</string>\n\t\t<string>agent</string>",
		"<key>FORGE_SERVER</key>\n\t\t<string>https://f.example/?a=1&amp;b=&lt;2&gt;</string>",
		"<key>FORGE_ENROLL_TOKEN_FILE</key>\n\t\t<string>/etc/forge/enroll-token</string>",
		"<key>FORGE_STATE_DIR</key>\n\t\t<string>/var/lib/forge-agent</string>",
		"<key>SuccessfulExit</key>\n\t\t<false/>",
		"<key>ExitTimeOut</key>\n\t<integer>90</integer>",
	} {
		if !strings.Contains(p, s) {
			t.Errorf("the plist lacks %q", s)
		}
	}
	if strings.Contains(p, "UserName") {
		t.Error("the plist names a user, want root when none is given")
	}
	if p := service.LaunchdPlist("/f", nil, "_forge"); !strings.Contains(p, "<key>UserName</key>\n\t<string>_forge</string>") {
		t.Errorf("the plist does not run as the user given:\n%s", p)
	}
}

// TestPackagingFiles: the package's scripts are POSIX sh, and its default
// configuration sets nothing (the operator must name a server).
func TestPackagingFiles(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"postinstall.sh", "preremove.sh", "postremove.sh"} {
		b, err := os.ReadFile(filepath.Join("../../packaging", f))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(b), "#!/bin/sh\n") {
			t.Errorf("%s does not start with #!/bin/sh", f)
		}
	}
	b, err := os.ReadFile("../../packaging/agent.env")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if !strings.HasPrefix(line, "#") {
			t.Errorf("packaging/agent.env sets %q; it should only show examples", line)
		}
	}
}
