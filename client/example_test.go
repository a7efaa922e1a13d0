package client_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/client"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// The examples run against a forge server with three agents: web-1 and web-2
// (labels env=prod, role=web) and db-1 (env=prod, role=db), which run `echo`
// and `sh` with exec and handle the task types `greet` and `wait`.

// Connect to a server (or to several replicas, separated by commas) with an
// operator token, and list the fleet.
func ExampleNew() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	agents, err := c.Agents(ctx, &forgev1.ListAgentsRequest{Selector: "role=web"})
	if err != nil {
		log.Fatal(err)
	}
	var names []string
	for _, a := range agents {
		names = append(names, a.Name+" "+strings.ToLower(strings.TrimPrefix(a.Status.String(), "AGENT_STATUS_")))
	}
	fmt.Println(strings.Join(sorted(names), "\n"))
	// Output:
	// web-1 online
	// web-2 online
}

// Run a command on the agents a selector matches and print each one's result.
func ExampleClient_Run() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	job := client.Exec(client.Selector("env=prod"), "echo", "hello")
	job.Timeout = durationpb.New(time.Minute) // any field of the API's DispatchRequest
	res, err := c.Run(ctx, job)
	if err != nil {
		log.Fatal(err)
	}
	for _, t := range res.Tasks { // ordered by agent name
		fmt.Printf("%s: %s exit %d: %s", res.AgentName(t), t.State, t.ExitCode, t.Output)
	}
	fmt.Println("all succeeded:", res.Succeeded())
	// Output:
	// db-1: TASK_STATE_SUCCEEDED exit 0: hello
	// web-1: TASK_STATE_SUCCEEDED exit 0: hello
	// web-2: TASK_STATE_SUCCEEDED exit 0: hello
	// all succeeded: true
}

// Run a task type of a Go agent's own (agent.Handle) on agents chosen by name:
// a name, or a glob over names.
func ExampleAgentName() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.Run(ctx, client.NewDispatch("greet", []byte("forge"), client.AgentName("web-*")))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Job.Target)
	for _, t := range res.Tasks {
		fmt.Printf("%s: %s\n", res.AgentName(t), t.Output)
	}
	// Output:
	// agents named web-*
	// web-1: hello, forge
	// web-2: hello, forge
}

// A failing command: the task ends FAILED with the command's exit code, and
// Run itself succeeds — it reports what happened on each agent.
func ExampleResult_Failed() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.Run(ctx, client.Exec(client.Agent("db-1"), "sh", "-c", "echo checking; exit 3"))
	if err != nil {
		log.Fatal(err)
	}
	for _, t := range res.Failed() {
		fmt.Printf("%s: %s exit %d: %s", res.AgentName(t), t.State, t.ExitCode, t.Output)
	}
	// Output:
	// db-1: TASK_STATE_FAILED exit 3: checking
}

// Dispatch returns the job at once; Wait waits for it by id, here reporting
// its counts as they change.
func ExampleClient_Wait() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	d, err := c.Dispatch(ctx, client.Exec(client.Selector("role=web"), "sh", "-c", "sleep 0.3; echo done"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("job of %d tasks\n", len(d.TaskIds))
	res, err := c.Wait(ctx, d.JobId, client.OnProgress(func(j *forgev1.JobInfo) {
		if j.Done {
			fmt.Printf("done: %d succeeded of %d\n", j.Counts.Succeeded, j.Counts.Total)
		}
	}))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Succeeded())
	// Output:
	// job of 2 tasks
	// done: 2 succeeded of 2
	// true
}

// Cancel a job: its running commands are stopped (their context is canceled
// on the agent) and the tasks end CANCELED.
func ExampleClient_CancelJob() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	d, err := c.Dispatch(ctx, client.NewDispatch("wait", nil, client.Agent("web-1")))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.CancelJob(ctx, d.JobId, "changed my mind"); err != nil {
		log.Fatal(err)
	}
	res, err := c.Wait(ctx, d.JobId)
	if err != nil {
		log.Fatal(err)
	}
	t := res.Tasks[0]
	last := t.History[len(t.History)-1] // the reason is kept in the task's history
	fmt.Println(t.State, strings.HasPrefix(last.Reason, "changed my mind"))
	// Output:
	// TASK_STATE_CANCELED true
}

// Errors carry the server's Connect code and message.
func ExampleClient_Dispatch_errors() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Dispatch(ctx, client.Exec(client.Selector("env in (prod"), "uptime"))
	fmt.Println(connect.CodeOf(err))
	_, err = c.Dispatch(ctx, client.Exec(client.AgentID("a0000000000000000"), "uptime"))
	fmt.Println(connect.CodeOf(err))
	// Output:
	// invalid_argument
	// not_found
}

// With several servers, calls move to the next when one cannot be reached, and
// OnRetry tells as it happens.
func ExampleOnRetry() {
	ctx := context.Background()
	servers := "http://127.0.0.1:1," + os.Getenv("FORGE_SERVER") // nothing listens on port 1
	c, err := client.New(servers, os.Getenv("FORGE_ADMIN_TOKEN"), client.OnRetry(func(r client.Retry) {
		fmt.Printf("retry %d: %s: %s\n", r.Attempt, r.Server, connect.CodeOf(r.Err))
	}))
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.Run(ctx, client.NewDispatch("greet", []byte("again"), client.Agent("db-1")))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", res.Tasks[0].Output)
	// Output:
	// retry 1: http://127.0.0.1:1: unavailable
	// hello, again
}

// Control gives every call of the API, with the client's retries and
// failover: here the newest job.
func ExampleClient_Control() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.Run(ctx, client.NewDispatch("greet", nil, client.All())); err != nil {
		log.Fatal(err)
	}
	res, err := c.Control().ListJobs(ctx, connect.NewRequest(&forgev1.ListJobsRequest{PageSize: 1}))
	if err != nil {
		log.Fatal(err)
	}
	j := res.Msg.Jobs[0]
	fmt.Println(j.Type, j.Target, j.Counts.Succeeded)
	// Output:
	// greet all 3
}

// Follow a command's output as it runs: its lines arrive while it prints them.
func ExampleClient_Follow() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	d, err := c.Dispatch(ctx, client.Exec(client.Agent("web-1"), "sh", "-c", "echo building; sleep 0.5; echo built"))
	if err != nil {
		log.Fatal(err)
	}
	state, err := c.Follow(ctx, d.TaskIds[0], os.Stdout, os.Stderr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(state)
	// Output:
	// building
	// built
	// TASK_STATE_SUCCEEDED
}

// Follow every agent of a job at once, each line prefixed with the agent's
// name, as `forge run` prints them; then wait for the results.
func ExampleClient_FollowJob() {
	ctx := context.Background()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		log.Fatal(err)
	}
	d, err := c.Dispatch(ctx, client.Exec(client.Selector("role=web"), "sh", "-c", "echo step 1; sleep 0.2; echo step 2"))
	if err != nil {
		log.Fatal(err)
	}
	stdout, stderr := client.NewLines(os.Stdout), client.NewLines(os.Stderr)
	err = c.FollowJob(ctx, d.JobId, func(t *forgev1.TaskInfo, agent string) (io.Writer, io.Writer) {
		return stdout.Prefix(agent + ": "), stderr.Prefix(agent + ": ")
	})
	stdout.Flush() // a last line without its newline
	stderr.Flush()
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.Wait(ctx, d.JobId)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("succeeded:", res.Job.Counts.Succeeded)
	// Unordered output:
	// web-1: step 1
	// web-2: step 1
	// web-1: step 2
	// web-2: step 2
	// succeeded: 2
}
