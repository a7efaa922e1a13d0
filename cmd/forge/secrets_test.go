//go:build linux

package main_test

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// snoop is what a hostile command runs to find the agent's secrets: the
// environment and command line the agent process was started with, its files
// through /proc, and its state dir.
const snoop = `
exec 2>&1 # a refused redirection is the shell's own error: keep it in its section
echo "== environ"; tr '\0' '\n' < /proc/$PPID/environ 2>&1
echo "== cmdline"; tr '\0' ' ' < /proc/$PPID/cmdline 2>&1; echo
echo "== own env"; env
echo "== state dir"; for f in STATE/*; do echo "-- $f"; cat "$f" 2>&1; echo; done
echo "== via proc root"; cat /proc/$PPID/root/STATE/identity.json 2>&1; echo
echo "== fds"; ls -l /proc/$PPID/fd 2>&1
`

// TestAttackAgentSecrets runs, through the real binary, a command that looks
// for the agent's secrets everywhere it could (issue 13, finding 3): the
// agent was given its enrollment token both on the command line and in
// FORGE_ENROLL_TOKEN. It never finds the enrollment token — the agent started
// itself again without it in view — and, run as another user (--exec-user), it
// cannot read the agent's state dir, its /proc files, or its agent token either.
// An agent running as an ordinary user is undumpable, so a command of that same
// user cannot read /proc/<agent>/environ or its memory.
func TestAttackAgentSecrets(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the cases run the agent or its commands as the user nobody")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("needs a user nobody")
	}
	url := startServer(t)
	for _, tc := range []struct {
		name      string
		asNobody  bool     // the agent itself runs as nobody
		agentArgs []string // more flags
		hidden    bool     // the state dir and /proc of the agent must be unreadable
	}{
		{name: "root agent, commands as root"},
		{name: "root agent, commands as nobody", agentArgs: []string{"--exec-user", "nobody"}, hidden: true},
		{name: "agent and commands as nobody", asNobody: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			state := sharedDir(t) // open to nobody, so the nobody agent can use it
			if tc.asNobody {
				uid, _ := strconv.Atoi(nobody.Uid)
				gid, _ := strconv.Atoi(nobody.Gid)
				os.Chown(state, uid, gid)
			}
			label := "secrets=" + strconv.Itoa(int(time.Now().UnixNano()%1e9))
			args := append([]string{"agent", "--server", url, "--enroll-token", enrollToken, "--state-dir", state,
				"--allow-exec", "/bin/sh", "--label", label}, tc.agentArgs...)
			p := startAgentProc(t, tc.asNobody, nobody, args)
			ctl := control(url)
			agents := waitAgents(t, ctl, label, 1)
			res, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec",
				Payload: execJSON("/bin/sh", "-c", strings.ReplaceAll(snoop, "STATE", state)),
				Target:  &forgev1.DispatchRequest_AgentId{AgentId: agents[0].Id}, Wait: durationpb.New(30 * time.Second)}))
			if err != nil || len(res.Msg.Tasks) != 1 {
				t.Fatalf("Dispatch = %v, %v\nagent output:\n%s", res, err, p.output())
			}
			out := string(res.Msg.Tasks[0].Output)
			defer func() {
				if t.Failed() {
					t.Logf("what the command found:\n%s", out)
				}
			}()
			if strings.Contains(out, enrollToken) {
				t.Errorf("the command read the enrollment token")
			}
			if !strings.Contains(out, "== cmdline") || !strings.Contains(out, "agent --server") {
				t.Errorf("the command did not read the agent's command line, so the test shows nothing")
			}
			idFile, _ := os.ReadFile(filepath.Join(state, "identity.json"))
			var id struct {
				AgentToken string `json:"agent_token"`
			}
			if json.Unmarshal(idFile, &id) != nil || id.AgentToken == "" {
				t.Fatalf("no saved identity in the state dir: %q", idFile)
			}
			environ := section(out, "== environ")
			if tc.hidden {
				if strings.Contains(out, id.AgentToken) {
					t.Errorf("a command run as another user read the agent token")
				}
				for _, s := range []string{"== environ", "== via proc root"} {
					if !strings.Contains(section(out, s), "Permission denied") {
						t.Errorf("%s: not refused", s)
					}
				}
			}
			if tc.asNobody && !strings.Contains(environ, "Permission denied") {
				t.Errorf("a command of the agent's own user read /proc/<agent>/environ of an undumpable agent:\n%s", environ)
			}
			if !tc.hidden && !tc.asNobody && !strings.Contains(environ, "PATH=") {
				t.Errorf("the root command could not read the agent's environment, so the test shows nothing:\n%s", environ)
			}
		})
	}
}

// section returns the part of out after the line head, up to the next "== ".
func section(out, head string) string {
	_, s, _ := strings.Cut(out, head+"\n")
	if i := strings.Index(s, "== "); i >= 0 {
		s = s[:i]
	}
	return s
}

func execJSON(argv ...string) []byte {
	b, _ := json.Marshal(map[string]any{"argv": argv})
	return b
}

// sharedDir returns a new directory others may enter (0755), removed at the end.
func sharedDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "forge-secrets-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o755)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// startAgentProc starts the built forge binary with args and FORGE_ENROLL_TOKEN
// set, as nobody when asked (from a copy of the binary nobody can run).
func startAgentProc(t *testing.T, asNobody bool, nobody *user.User, args []string) *proc {
	t.Helper()
	path := bin(t, "forge")
	cmd := exec.Command(path, args...)
	if asNobody {
		dir := sharedDir(t)
		path = filepath.Join(dir, "forge")
		if err := copyFile(bin(t, "forge"), path); err != nil {
			t.Fatal(err)
		}
		cmd = exec.Command(path, args...)
		uid, _ := strconv.Atoi(nobody.Uid)
		gid, _ := strconv.Atoi(nobody.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Dir = dir
	}
	cmd.Env = append(os.Environ(), "FORGE_ENROLL_TOKEN="+enrollToken, "HOME=/")
	return startCmd(t, cmd)
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// TestAgentAllowEnvRefusesStartupVariables: --allow-env cannot let through what
// ForbiddenEnv forbids; the agent refuses to start, saying why.
func TestAgentAllowEnvRefusesStartupVariables(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"LD_PRELOAD", "BASH_ENV", "ENV", "GCONV_PATH"} {
		out, code := runForge(t, nil, "agent", "--server", "http://127.0.0.1:1", "--enroll-token", enrollToken, "--allow-env", name)
		if code != 1 || !strings.Contains(out, "--allow-env "+name+": never allowed") {
			t.Errorf("--allow-env %s: exit %d:\n%s", name, code, out)
		}
	}
}
