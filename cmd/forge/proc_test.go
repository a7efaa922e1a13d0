package main_test

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests that need a real process — a signal, a SIGKILL, a process tree, the
// README run as printed, the bench's child processes — run the built binaries.
// TestMain starts building them at once, in the background, so the in-process
// tests run meanwhile; a run that needs neither stops the build at its end.

var (
	binDir   string
	binErr   error
	binReady = make(chan struct{}) // closed when the build is over
)

// TestMain builds the binaries beside the tests, and removes them at the end.
func TestMain(m *testing.M) {
	ctx, cancel := context.WithCancel(context.Background())
	go buildBinaries(ctx)
	code := m.Run()
	cancel()
	<-binReady
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// buildBinaries builds forge and the README's Go examples with -race.
func buildBinaries(ctx context.Context) {
	defer close(binReady)
	binDir, binErr = os.MkdirTemp("", "forge-bin-")
	if binErr != nil {
		return
	}
	for pkg, name := range map[string]string{".": "forge", "../../examples/embed": "embed",
		"../../examples/embedserver": "embedserver", "../../examples/control": "control"} {
		out, err := exec.CommandContext(ctx, "go", "build", "-race", "-o", filepath.Join(binDir, name), pkg).CombinedOutput()
		if err != nil {
			binErr = &buildError{pkg, err, out}
			return
		}
	}
}

// bin returns the path of the built forge binary ("forge") or of one of the
// README's Go examples ("embed", "embedserver", "control"), waiting for the build.
func bin(t *testing.T, name string) string {
	t.Helper()
	<-binReady
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, name)
}

type buildError struct {
	pkg string
	err error
	out []byte
}

func (e *buildError) Error() string {
	return "building " + e.pkg + ": " + e.err.Error() + "\n" + string(e.out)
}

// proc is a running process whose output the test can read.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	url  chan string
	done chan struct{} // closed once the process is waited for
	err  error         // its exit, once done is closed
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

var listenRE = regexp.MustCompile(`listening on (\S+)`)

// startProc starts the built binary name with args, in the environment of the
// test process plus e; it is stopped (SIGTERM, then SIGKILL) when the test ends.
func startProc(t *testing.T, e env, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin(t, name), args...)
	cmd.Env = os.Environ()
	for k, v := range e {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return startCmd(t, cmd)
}

// startCmd starts cmd, its output read as startProc reads it; it is stopped
// (SIGTERM, then SIGKILL) when the test ends.
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	name, args := filepath.Base(cmd.Path), cmd.Args[1:]
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	p := &proc{cmd: cmd, url: make(chan string, 1), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		w.Close()
		close(p.done)
	}()
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.out.WriteString(line + "\n")
			p.mu.Unlock()
			if m := listenRE.FindStringSubmatch(line); m != nil {
				select {
				case p.url <- m[1]:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(time.Minute):
			p.signal(syscall.SIGKILL)
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s %v output:\n%s", name, args, p.output())
		}
	})
	return p
}

func (p *proc) signal(sig os.Signal) {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Signal(sig)
	}
}

// wait waits for the process to exit and returns how it did.
func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(time.Minute):
		t.Fatalf("the process did not exit within a minute:\n%s", p.output())
	}
	return nil
}

// kill ends the process with SIGKILL and waits for it.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.signal(syscall.SIGKILL)
	p.wait(t)
}

// waitURL waits until the server process listens and returns its URL.
func (p *proc) waitURL(t *testing.T) string {
	t.Helper()
	select {
	case u := <-p.url:
		return u
	case <-p.done:
		t.Fatalf("the server exited (%v):\n%s", p.err, p.output())
	case <-time.After(time.Minute):
		t.Fatalf("the server did not start:\n%s", p.output())
	}
	return ""
}

// exited tells whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}
