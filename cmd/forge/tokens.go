package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

func (m *Main) runTokens(ctx context.Context, args []string) error {
	f := m.newFlags("tokens", "forge tokens: list, create and revoke enrollment tokens (what agents register with).\n"+
		"A token made here is printed once, by create; the server keeps only its hash.")
	f.usage = "forge tokens [flags]                      list them\nforge tokens create [flags] [DESCRIPTION]\nforge tokens revoke [flags] TOKEN_ID..."
	f.examples = "forge tokens create 'rack 12' --max-uses 40 --ttl 24h\nforge tokens\nforge tokens revoke 7k2m9x4q"
	cf := f.client()
	maxUses := f.FlagSet.Int("max-uses", 0, "create: how many agents it may enroll (0: no limit)")
	ttl := f.FlagSet.Duration("ttl", 0, "create: how long it works (0: until revoked)")
	if err := f.parse(args); err != nil {
		return err
	}
	verb, rest := "list", f.Args()
	if len(rest) > 0 {
		verb, rest = rest[0], rest[1:]
	}
	p := cf.printer()
	switch verb {
	case "list":
		if len(rest) > 0 {
			return f.usageError("unexpected argument %q", rest[0])
		}
	case "create":
		if len(rest) > 1 {
			return f.usageError("give one description (quote it)")
		}
	case "revoke":
		if len(rest) == 0 {
			return f.usageError("give token ids (forge tokens lists them)")
		}
	default:
		return f.usageError("unknown %q: want list, create or revoke", verb)
	}
	c, err := m.newClient("tokens", cf, nil)
	if err != nil {
		return err
	}
	ctl := c.Control()
	switch verb {
	case "create":
		req := &forgev1.CreateEnrollmentTokenRequest{MaxUses: int32(*maxUses)}
		if len(rest) == 1 {
			req.Description = rest[0]
		}
		if *ttl > 0 {
			req.Ttl = durationpb.New(*ttl)
		}
		res, err := ctl.CreateEnrollmentToken(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		if *cf.json {
			return m.writeJSON(p, map[string]any{"token": res.Msg.Token, "info": jsonObject(res.Msg.Info)})
		}
		fmt.Fprintln(m.Stdout, res.Msg.Token)
		fmt.Fprintf(m.Stderr, "enrollment token %s: shown only now; forge agent --enroll-token reads it\n", p.Line(res.Msg.Info.GetId()))
		return nil
	case "revoke":
		for _, id := range rest {
			if _, err := ctl.RevokeEnrollmentToken(ctx, connect.NewRequest(&forgev1.RevokeEnrollmentTokenRequest{Id: id})); err != nil {
				return aboutID(id, err)
			}
			fmt.Fprintf(m.Stdout, "%s revoked\n", p.Line(id))
		}
		return nil
	}
	res, err := ctl.ListEnrollmentTokens(ctx, connect.NewRequest(&forgev1.ListEnrollmentTokensRequest{}))
	if err != nil {
		return err
	}
	if *cf.json {
		out := make([]any, len(res.Msg.Tokens))
		for i, t := range res.Msg.Tokens {
			out[i] = jsonObject(t)
		}
		return m.writeJSON(p, map[string]any{"tokens": out})
	}
	if len(res.Msg.Tokens) == 0 {
		fmt.Fprintln(m.Stdout, noneText("enrollment tokens"))
		return nil
	}
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDESCRIPTION\tUSES LEFT\tEXPIRES\tCREATED\tREVOKED")
	for _, t := range res.Msg.Tokens {
		uses := "no limit"
		if t.MaxUses > 0 {
			uses = fmt.Sprintf("%d of %d", t.UsesLeft, t.MaxUses)
		}
		expires := "never"
		if t.ExpiresAt != nil {
			expires = timeText(t.ExpiresAt)
			if t.ExpiresAt.AsTime().Before(time.Now()) {
				expires += " (expired)"
			}
		}
		revoked := "no"
		if t.Revoked {
			revoked = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Line(t.Id), cut(p.Line(t.Description), 40), uses, expires, timeText(t.CreatedAt), revoked)
	}
	return tw.Flush()
}
