package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/internal/termsafe"
)

// clientFlags are the flags every operator command takes.
type clientFlags struct {
	server *string
	token  *string
	ca     *string
	json   *bool
	raw    *bool
}

func (f *flags) client() clientFlags {
	return clientFlags{
		server: f.String("server", "http://127.0.0.1:8080", "server URL"),
		token:  f.String("admin-token", "", "operator token"),
		ca:     f.String("ca", "", "PEM file of the CA that signed the server's certificate (replaces the system roots)"),
		json:   f.Bool("json", false, "print JSON instead of a table"),
		raw:    f.Bool("raw", false, "print text from agents as it is: control, bidi and zero-width characters are escaped otherwise"),
	}
}

// printer returns what prints text that came from agents or the API: escaped
// (see package termsafe) unless --raw.
func (c clientFlags) printer() termsafe.Printer { return termsafe.Printer{Raw: *c.raw} }

// httpClient returns a client trusting caFile (or the system roots). No global
// timeout: long-polls carry their own deadlines.
func httpClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 16
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s: no PEM certificate in it", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr}, nil
}

func (c clientFlags) control() (forgev1connect.ControlServiceClient, error) {
	if *c.token == "" {
		return nil, errors.New("--admin-token (or FORGE_ADMIN_TOKEN) is required")
	}
	hc, err := httpClient(*c.ca)
	if err != nil {
		return nil, err
	}
	return forgev1connect.NewControlServiceClient(hc, strings.TrimRight(*c.server, "/"), connect.WithInterceptors(bearer.Interceptor(*c.token))), nil
}

// printJSON prints msg as JSON, its strings escaped by p.
func (m *Main) printJSON(p termsafe.Printer, msg proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(msg)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(m.Stdout, "%s\n", p.JSON(b))
	return err
}

func stateName(s forgev1.TaskState) string { return strings.TrimPrefix(s.String(), "TASK_STATE_") }

func statusName(s forgev1.AgentStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "AGENT_STATUS_"))
}

func ago(t interface{ AsTime() time.Time }) string {
	if t == nil {
		return "-"
	}
	return time.Since(t.AsTime()).Round(time.Second).String() + " ago"
}

func labelsText(p termsafe.Printer, l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return p.Line(strings.Join(parts, ","))
}

func (m *Main) runAgents(ctx context.Context, args []string) error {
	f := m.newFlags("agents", "forge agents: list agents.")
	cf := f.client()
	selector := f.String("selector", "", "only agents whose labels match, such as env=prod,role in (web,api)")
	status := f.String("status", "", "only agents in this status: online, offline or revoked")
	if err := f.parse(args); err != nil {
		return err
	}
	ctl, err := cf.control()
	if err != nil {
		return err
	}
	req := &forgev1.ListAgentsRequest{Selector: *selector, PageSize: 1000}
	if *status != "" {
		v, ok := forgev1.AgentStatus_value["AGENT_STATUS_"+strings.ToUpper(*status)]
		if !ok {
			return fmt.Errorf("--status: want online, offline or revoked, not %q", *status)
		}
		req.Status = forgev1.AgentStatus(v)
	}
	all := &forgev1.ListAgentsResponse{}
	for {
		res, err := ctl.ListAgents(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		all.Agents = append(all.Agents, res.Msg.Agents...)
		if res.Msg.NextPageToken == "" {
			break
		}
		req.PageToken = res.Msg.NextPageToken
	}
	p := cf.printer()
	if *cf.json {
		return m.printJSON(p, all)
	}
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tLAST SEEN\tRUNNING\tPENDING\tLABELS")
	for _, a := range all.Agents {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", p.Line(a.Id), p.Line(a.Name), statusName(a.Status), ago(a.LastSeenAt), len(a.Running), a.Pending, labelsText(p, a.Labels))
	}
	return tw.Flush()
}

func (m *Main) runTasks(ctx context.Context, args []string) error {
	f := m.newFlags("tasks", "forge tasks: list tasks (newest first), or show one with its output and history.")
	cf := f.client()
	job := f.String("job", "", "only tasks of this job")
	agentID := f.String("agent", "", "only tasks of this agent")
	state := f.String("state", "", "only tasks in this state, such as failed or running")
	limit := f.Int("limit", 50, "most tasks to list")
	if err := f.parse(args); err != nil {
		return err
	}
	ctl, err := cf.control()
	if err != nil {
		return err
	}
	p := cf.printer()
	if f.NArg() > 0 {
		for _, id := range f.Args() {
			res, err := ctl.GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
			if err != nil {
				return err
			}
			if *cf.json {
				if err := m.printJSON(p, res.Msg.Task); err != nil {
					return err
				}
				continue
			}
			m.printTask(p, res.Msg.Task)
		}
		return nil
	}
	req := &forgev1.ListTasksRequest{JobId: *job, AgentId: *agentID, PageSize: int32(min(*limit, 1000))}
	if *state != "" {
		v, ok := forgev1.TaskState_value["TASK_STATE_"+strings.ToUpper(*state)]
		if !ok {
			return fmt.Errorf("--state: unknown state %q", *state)
		}
		req.State = forgev1.TaskState(v)
	}
	res, err := ctl.ListTasks(ctx, connect.NewRequest(req))
	if err != nil {
		return err
	}
	if *cf.json {
		return m.printJSON(p, res.Msg)
	}
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tJOB\tAGENT\tTYPE\tSTATE\tATTEMPT\tEXIT\tUPDATED")
	for _, t := range res.Msg.Tasks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", p.Line(t.Id), p.Line(t.JobId), p.Line(t.AgentId), p.Line(t.Type), stateName(t.State), t.Attempt, t.ExitCode, ago(t.UpdatedAt))
	}
	return tw.Flush()
}

// printTask prints a task with its history and output, text from the agent
// escaped by p.
func (m *Main) printTask(p termsafe.Printer, t *forgev1.TaskInfo) {
	fmt.Fprintf(m.Stdout, "task     %s\njob      %s\nagent    %s\ntype     %s\nstate    %s\nattempt  %d of %d\nexit     %d\n",
		p.Line(t.Id), p.Line(t.JobId), p.Line(t.AgentId), p.Line(t.Type), stateName(t.State), t.Attempt, t.MaxAttempts, t.ExitCode)
	if t.Error != "" {
		fmt.Fprintf(m.Stdout, "error    %s\n", p.Line(t.Error))
	}
	fmt.Fprintln(m.Stdout, "history")
	for _, h := range t.History {
		fmt.Fprintf(m.Stdout, "  %s  %-9s  %s\n", h.At.AsTime().Local().Format(time.RFC3339Nano), stateName(h.State), p.Line(h.Reason))
	}
	if len(t.Output) > 0 || len(t.Stderr) > 0 {
		fmt.Fprintf(m.Stdout, "output (%d bytes", t.OutputSize)
		if t.OutputTruncated {
			fmt.Fprint(m.Stdout, ", cut to the server's cap")
		}
		fmt.Fprintln(m.Stdout, ")")
	}
	for _, o := range []struct {
		name string
		text []byte
	}{{"stdout", t.Output}, {"stderr", t.Stderr}} {
		if len(o.text) == 0 {
			continue
		}
		fmt.Fprintf(m.Stdout, "%s\n%s", o.name, p.Text(o.text))
		if !strings.HasSuffix(string(o.text), "\n") {
			fmt.Fprintln(m.Stdout)
		}
	}
}

func (m *Main) runCancel(ctx context.Context, args []string) error {
	f := m.newFlags("cancel", "forge cancel: cancel tasks by id, or every task of a job with --job.")
	cf := f.client()
	job := f.String("job", "", "cancel every task of this job")
	reason := f.String("reason", "", "why, kept in each task's history")
	if err := f.parse(args); err != nil {
		return err
	}
	if (*job == "") == (f.NArg() == 0) {
		fmt.Fprintln(m.Stderr, "forge cancel: give task ids or --job JOB_ID")
		return errUsage
	}
	ctl, err := cf.control()
	if err != nil {
		return err
	}
	if *job != "" {
		res, err := ctl.CancelJob(ctx, connect.NewRequest(&forgev1.CancelJobRequest{JobId: *job, Reason: *reason}))
		if err != nil {
			return err
		}
		if *cf.json {
			return m.printJSON(cf.printer(), res.Msg)
		}
		c := res.Msg.Job.Counts
		fmt.Fprintf(m.Stdout, "job %s: %d canceled, %d still running (asked to stop)\n", *job, c.GetCanceled(), c.GetRunning())
		return nil
	}
	for _, id := range f.Args() {
		res, err := ctl.CancelTask(ctx, connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: id, Reason: *reason}))
		if err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		if *cf.json {
			m.printJSON(cf.printer(), res.Msg)
			continue
		}
		fmt.Fprintf(m.Stdout, "%s %s\n", termsafe.Line(id), stateName(res.Msg.Task.State))
	}
	return nil
}

func (m *Main) runRevoke(ctx context.Context, args []string) error {
	f := m.newFlags("revoke", "forge revoke: revoke agents; their tokens stop working and their tasks are canceled.")
	cf := f.client()
	reason := f.String("reason", "", "why, kept in the history of the tasks it cancels")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() == 0 {
		fmt.Fprintln(m.Stderr, "forge revoke: give agent ids")
		return errUsage
	}
	ctl, err := cf.control()
	if err != nil {
		return err
	}
	for _, id := range f.Args() {
		res, err := ctl.RevokeAgent(ctx, connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: id, Reason: *reason}))
		if err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		fmt.Fprintf(m.Stdout, "%s %s\n", termsafe.Line(id), statusName(res.Msg.Agent.Status))
	}
	return nil
}
