package server

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	connectv2 "connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect/v2"

	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/gzipcap"
)

// apiServices are the services forge serves; reflection lists them and the
// health service answers for each.
var apiServices = []string{
	forgev1connect.AgentServiceName,
	forgev1connect.ControlServiceName,
	forgev1connect.PingServiceName,
}

// mountIntrospection serves gRPC server reflection (v1 and v1alpha), so
// `buf curl` and grpcurl call forge without its .proto files, and the standard
// gRPC health service, whose Check answers what Ready does. Neither needs a
// token: reflection describes only the public API (the same .proto files
// every client is generated from), and health says only SERVING or
// NOT_SERVING, as /readyz does. Reflection streams both ways, so it needs
// HTTP/2: over TLS it is negotiated, on plain HTTP `forge server` takes HTTP/2
// with prior knowledge (h2c); over HTTP/1.1 it is refused with a 505 that says so.
func (s *Server) mountIntrospection() {
	names := append(append([]string(nil), apiServices...),
		grpchealth.HealthV1ServiceName, grpcreflect.ReflectV1ServiceName, grpcreflect.ReflectV1AlphaServiceName)
	rs := connectv2.NewServer()
	grpcreflect.Register(rs, grpcreflect.WithNamer(grpcreflect.NamerFunc(func() []string { return names })))
	// No compressed requests: a stream of small gzip messages that each inflate
	// to the read limit would cost the server a thousand times what it costs a
	// caller who needs no token. gRPC tools do not compress what they send.
	connecthttp.Mount(s.mux, rs, connecthttp.WithReadMaxBytes(64<<10), connecthttp.WithCompressors())

	path, h := grpchealth.NewHandler(healthChecker{s}, connect.WithReadMaxBytes(4<<10), gzipcap.Handler(4<<10))
	s.mux.Handle(path, h)
}

// healthChecker answers the gRPC health service: SERVING when Ready is nil,
// for the server as a whole (the empty name) and for each API service alike.
type healthChecker struct{ s *Server }

func (h healthChecker) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	known := req.Service == ""
	for _, name := range apiServices {
		known = known || req.Service == name
	}
	if !known {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %.100q: forge answers for \"\" (the server) and %v", req.Service, apiServices))
	}
	if h.s.Ready(ctx) != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}
