package server_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"connectrpc.com/connect"
	connectv2 "connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect/v2"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/orange-forge/forge/internal/forgetest"
)

// h2c serves e's handler on a server of its own that also takes HTTP/2 with
// prior knowledge, as `forge server` does on plain HTTP, and returns its URL
// and a client that speaks it.
func h2c(t *testing.T, e *forgetest.Server) (string, *http.Client) {
	t.Helper()
	hs := httptest.NewUnstartedServer(e.Server)
	hs.Config.Protocols = new(http.Protocols)
	hs.Config.Protocols.SetHTTP1(true)
	hs.Config.Protocols.SetUnencryptedHTTP2(true)
	hs.Start()
	t.Cleanup(hs.Close)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return hs.URL, &http.Client{Transport: tr}
}

// TestReflection: a client that has none of forge's .proto files learns the
// API by gRPC server reflection, without a token, and calls ListAgents over
// gRPC with what it learnt (what `buf curl` and grpcurl do).
func TestReflection(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		e.Register("web-1", map[string]string{"env": "prod"})
		url, hc := h2c(t, e)

		cl := grpcreflect.NewClient(connectv2.NewClient(connecthttp.NewTransport(hc, url, connecthttp.WithGRPC())))
		stream := cl.NewStream(t.Context())
		defer stream.Close()
		names, err := stream.ListServices()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []protoreflect.FullName{"forge.v1.AgentService", "forge.v1.ControlService", "forge.v1.PingService",
			"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
			if !slices.Contains(names, want) {
				t.Errorf("reflection lists %v, without %s", names, want)
			}
		}
		protos, err := stream.FileContainingSymbol("forge.v1.ControlService")
		if err != nil {
			t.Fatal(err)
		}
		// The files come with their dependencies, so they resolve on their own:
		// nothing of forge's compiled-in descriptors is used from here on.
		files, err := protodesc.NewFiles(&descriptorpb.FileDescriptorSet{File: protos})
		if err != nil {
			t.Fatal(err)
		}
		d, err := files.FindDescriptorByName("forge.v1.ControlService.ListAgents")
		if err != nil {
			t.Fatal(err)
		}
		method := d.(protoreflect.MethodDescriptor)
		req, res := dynamicpb.NewMessage(method.Input()), dynamicpb.NewMessage(method.Output())
		api := connectv2.NewClient(connecthttp.NewTransport(hc, url, connecthttp.WithGRPC()))
		ctx, info := connectv2.NewClientContext(t.Context())
		info.RequestHeader().Set("Authorization", "Bearer "+adminToken)
		spec := connectv2.Spec{StreamType: connectv2.StreamTypeUnary, Schema: method, Procedure: "/forge.v1.ControlService/ListAgents"}
		if err := api.CallUnary(ctx, spec, req, res); err != nil {
			t.Fatal(err)
		}
		agents := res.Get(method.Output().Fields().ByName("agents")).List()
		if agents.Len() != 1 {
			t.Fatalf("ListAgents by reflection: %v", res)
		}
		name := agents.Get(0).Message().Get(method.Output().Fields().ByName("agents").Message().Fields().ByName("name")).String()
		if name != "web-1" {
			t.Fatalf("ListAgents by reflection names %q, want web-1", name)
		}
		// The API itself still wants its token.
		ctx, _ = connectv2.NewClientContext(t.Context())
		err = api.CallUnary(ctx, spec, dynamicpb.NewMessage(method.Input()), dynamicpb.NewMessage(method.Output()))
		if connectv2.CodeOf(err) != connectv2.CodeUnauthenticated {
			t.Fatalf("ListAgents without a token by gRPC: %v, want unauthenticated", err)
		}
	})
}

// TestHealthService: the standard gRPC health service answers, without a
// token, SERVING for the server and each API service while the server is
// ready, NOT_SERVING once it is not, and not_found for other services.
func TestHealthService(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		url, hc := h2c(t, e)
		for _, c := range []struct {
			name   string
			client *grpchealth.Client
		}{
			{"grpc", grpchealth.NewClient(hc, url, connect.WithGRPC())},
			{"connect", grpchealth.NewClient(http.DefaultClient, e.URL)},
		} {
			for _, svc := range []string{"", "forge.v1.AgentService", "forge.v1.ControlService", "forge.v1.PingService"} {
				res, err := c.client.Check(t.Context(), &grpchealth.CheckRequest{Service: svc})
				if err != nil || res.Status != grpchealth.StatusServing {
					t.Fatalf("%s: Check(%q) = %v, %v; want SERVING", c.name, svc, res, err)
				}
			}
			_, err := c.client.Check(t.Context(), &grpchealth.CheckRequest{Service: "nope.v1.Nope"})
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Fatalf("%s: Check of an unknown service: %v, want not_found", c.name, err)
			}
		}
		e.Server.Close() // Ready now fails, as /readyz does
		res, err := grpchealth.NewClient(hc, url, connect.WithGRPC()).Check(t.Context(), &grpchealth.CheckRequest{})
		if err != nil || res.Status != grpchealth.StatusNotServing {
			t.Fatalf("Check after Close = %v, %v; want NOT_SERVING", res, err)
		}
	})
}
