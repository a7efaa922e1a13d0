package main_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
)

// h2cClient speaks only HTTP/2 with prior knowledge on plain HTTP, as grpcurl
// -plaintext and buf curl --http2-prior-knowledge do.
func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

// endless is a request body that never ends on its own, of unknown length (no
// Content-Length: HTTP/2 sends it as DATA frames), counting what was read.
type endless struct{ n atomic.Int64 }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	e.n.Add(int64(len(p)))
	return len(p), nil
}

// TestH2C: `forge server` on plain HTTP takes HTTP/2 with prior knowledge (for
// gRPC tools), and every limit of HTTP/1.1 holds there too: the token gate
// answers before the body is read, bodies are cut at --max-body whatever their
// framing, headers at 64 KiB, a connection carries at most 100 calls at once,
// the gRPC protocol gets the same refusals as Connect, and an HTTP/1.1 request
// asking to upgrade to h2c (the request smuggling route through proxies) is
// answered as HTTP/1.1.
func TestH2C(t *testing.T) {
	t.Parallel()
	u := startServer(t)
	hc := h2cClient()
	ctx := t.Context()

	t.Run("calls", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(ctx, "POST", u+"/forge.v1.PingService/Ping", strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.ProtoMajor != 2 || res.StatusCode != 200 {
			t.Fatalf("Ping over h2c: %s %s", res.Proto, res.Status)
		}
		ctl := forgev1connect.NewControlServiceClient(hc, u, connect.WithInterceptors(bearer.Interceptor(adminToken)))
		if _, err := ctl.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{})); err != nil {
			t.Fatalf("ListAgents over h2c: %v", err)
		}
	})

	t.Run("refusals, Connect and gRPC", func(t *testing.T) {
		reg, err := agentClient(u, enrollToken).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "h2"}))
		if err != nil {
			t.Fatal(err)
		}
		for _, proto := range []struct {
			name string
			opt  []connect.ClientOption
		}{{"connect", nil}, {"grpc", []connect.ClientOption{connect.WithGRPC()}}} {
			as := func(tok string) forgev1connect.ControlServiceClient {
				return forgev1connect.NewControlServiceClient(hc, u, append(proto.opt, connect.WithInterceptors(bearer.Interceptor(tok)))...)
			}
			for _, c := range []struct {
				tok  string
				want connect.Code
			}{{"", connect.CodeUnauthenticated}, {"nope-nope-nope-nope", connect.CodeUnauthenticated},
				{reg.Msg.AgentToken, connect.CodePermissionDenied}, {enrollToken, connect.CodePermissionDenied}} {
				_, err := as(c.tok).ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
				if connect.CodeOf(err) != c.want {
					t.Errorf("%s: ListAgents with token %.8q…: %v, want %v", proto.name, c.tok, err, c.want)
				}
			}
			big := &forgev1.DispatchRequest{Type: "echo", Payload: make([]byte, 5<<20), Target: &forgev1.DispatchRequest_All{All: true}}
			_, err := as(adminToken).Dispatch(ctx, connect.NewRequest(big))
			if connect.CodeOf(err) != connect.CodeResourceExhausted {
				t.Errorf("%s: a 5 MiB Dispatch: %v, want resource_exhausted", proto.name, err)
			}
			ag := forgev1connect.NewAgentServiceClient(hc, u, append(proto.opt, connect.WithInterceptors(bearer.Interceptor(reg.Msg.AgentToken)))...)
			if _, err := ag.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)})); err != nil {
				t.Errorf("%s: the agent's own Poll: %v", proto.name, err)
			}
		}
	})

	t.Run("bodies without a length", func(t *testing.T) {
		for _, c := range []struct {
			name, token, want string
			readMax           int64
		}{
			// Refused in the gate: at most what flow control let in before the answer.
			{"no token", "", "unauthenticated", 8 << 20},
			{"operator", adminToken, "resource_exhausted", 8 << 20},
		} {
			body := &endless{}
			req, _ := http.NewRequestWithContext(ctx, "POST", u+"/forge.v1.ControlService/Dispatch", io.NopCloser(body))
			req.Header.Set("Content-Type", "application/json")
			bearer.Set(req.Header, c.token)
			res, err := hc.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.ProtoMajor != 2 || !strings.Contains(string(b), `"code":"`+c.want+`"`) {
				t.Errorf("%s: an endless body over h2c: %s %s %s, want %s", c.name, res.Proto, res.Status, b, c.want)
			}
			if n := body.n.Load(); n > c.readMax {
				t.Errorf("%s: the client sent %d bytes before the server answered", c.name, n)
			}
		}
	})

	t.Run("headers over 64 KiB", func(t *testing.T) {
		// Go's client will not send headers over the limit the server
		// announced, so these are written by hand: HEADERS and CONTINUATION
		// frames carrying 100 KiB of headers. The server closes such a
		// connection (GOAWAY) before any handler runs.
		many := make([][2]string, 100)
		for i := range many {
			many[i] = [2]string{fmt.Sprintf("x-h%d", i), strings.Repeat("a", 1<<10)}
		}
		if typ, _ := h2Headers(t, u, many); typ != 0x7 {
			t.Errorf("100 headers of 1 KiB: frame type %d, want GOAWAY", typ)
		}
		if typ, _ := h2Headers(t, u, [][2]string{{"x-big", strings.Repeat("a", 100<<10)}}); typ != 0x7 {
			t.Errorf("one header of 100 KiB: frame type %d, want GOAWAY", typ)
		}
		// Within the limit they pass, and the server goes on serving.
		if typ, status := h2Headers(t, u, many[:10]); typ != 0x1 || status != "200" {
			t.Errorf("10 headers of 1 KiB: frame type %d %s, want the answer's headers with 200", typ, status)
		}
	})

	t.Run("reflection takes no compressed request", func(t *testing.T) {
		// Reflection needs no token: a stream of small gzip messages, each
		// inflating to its read limit, would cost the server a thousand
		// times what it costs the caller, so compressed messages are refused.
		var gz bytes.Buffer
		w := gzip.NewWriter(&gz)
		w.Write([]byte{0x3a, 0x00}) // ServerReflectionRequest{list_services: ""}
		w.Close()
		env := append([]byte{1, 0, 0, 0, 0}, gz.Bytes()...) // compressed, then the length
		binary.BigEndian.PutUint32(env[1:], uint32(gz.Len()))
		req, _ := http.NewRequestWithContext(ctx, "POST", u+"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", bytes.NewReader(env))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Grpc-Encoding", "gzip")
		req.Header.Set("Te", "trailers")
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		status := res.Header.Get("Grpc-Status") + res.Trailer.Get("Grpc-Status")
		if status != "12" { // unimplemented
			t.Errorf("a compressed reflection request: grpc-status %q (%s), want 12", status, res.Header.Get("Grpc-Message")+res.Trailer.Get("Grpc-Message"))
		}
	})

	t.Run("settings", func(t *testing.T) {
		s := h2Settings(t, u)
		if s[0x3] != 100 {
			t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d, want 100 (%v)", s[0x3], s)
		}
		if v := s[0x6]; v == 0 || v > 80<<10 {
			t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d, want about 64 KiB (%v)", v, s)
		}
	})

	t.Run("no upgrade to h2c", func(t *testing.T) {
		conn, err := net.Dial("tcp", hostOf(t, u))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "POST /forge.v1.PingService/Ping HTTP/1.1\r\nHost: forge\r\n"+
			"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"+
			"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 || res.ProtoMajor != 1 || res.Header.Get("Upgrade") != "" {
			t.Fatalf("an HTTP/1.1 request asking for h2c: %s %s, Upgrade %q; want 200 over HTTP/1.1", res.Proto, res.Status, res.Header.Get("Upgrade"))
		}
	})
}

func hostOf(t *testing.T, u string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return p.Host
}

// h2Headers sends a Ping with extra headers on a new HTTP/2 connection, in a
// HEADERS frame and as many CONTINUATION frames as it takes, and returns the
// type of the first frame of its answer (HEADERS, RST_STREAM or GOAWAY) and,
// for HEADERS, the status.
func h2Headers(t *testing.T, u string, extra [][2]string) (typ byte, status string) {
	t.Helper()
	conn := h2Conn(t, u)
	var block []byte
	block = append(block, 0x83, 0x86) // :method POST, :scheme http (static table)
	block = hpackLiteral(block, 4, "", "/forge.v1.PingService/Ping")
	block = hpackLiteral(block, 1, "", "forge")
	block = hpackLiteral(block, 0, "content-type", "application/json")
	for _, h := range extra {
		block = hpackLiteral(block, 0, h[0], h[1])
	}
	for i := 0; i < len(block); i += 16 << 10 {
		typ, flags := byte(0x1), byte(0) // HEADERS
		if i > 0 {
			typ = 0x9 // CONTINUATION
		}
		end := min(i+16<<10, len(block))
		if end == len(block) {
			flags |= 0x4 // END_HEADERS
		}
		writeFrame(t, conn, typ, flags, 1, block[i:end])
	}
	writeFrame(t, conn, 0x0, 0x1, 1, []byte("{}")) // DATA, END_STREAM
	for {
		typ, _, stream, payload := readFrame(t, conn)
		switch {
		case typ == 0x7 || typ == 0x3 && stream == 1: // GOAWAY, RST_STREAM
			return typ, ""
		case typ == 0x1 && stream == 1:
			// The answer's first field is :status, from the static table
			// (0x88 is 200 ... 0x8e is 500) or a literal with its name
			// indexed (8), as 431 is.
			if len(payload) > 0 && payload[0] >= 0x88 && payload[0] <= 0x8e {
				return typ, []string{"200", "204", "206", "304", "400", "404", "500"}[payload[0]-0x88]
			}
			return typ, fmt.Sprintf("%q", payload[:min(len(payload), 8)])
		}
	}
}

// h2Conn opens an HTTP/2 connection with prior knowledge: the preface and an
// empty SETTINGS frame are sent.
func h2Conn(t *testing.T, u string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", hostOf(t, u))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(conn, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	writeFrame(t, conn, 0x4, 0, 0, nil)
	return conn
}

func writeFrame(t *testing.T, conn net.Conn, typ, flags byte, stream uint32, payload []byte) {
	t.Helper()
	hdr := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[5:], stream)
	if _, err := conn.Write(append(hdr, payload...)); err != nil {
		t.Fatal(err)
	}
}

func readFrame(t *testing.T, conn net.Conn) (typ, flags byte, stream uint32, payload []byte) {
	t.Helper()
	hdr := make([]byte, 9)
	if _, err := io.ReadFull(conn, hdr); err != nil {
		t.Fatal(err)
	}
	payload = make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
	if _, err := io.ReadFull(conn, payload); err != nil {
		t.Fatal(err)
	}
	return hdr[3], hdr[4], binary.BigEndian.Uint32(hdr[5:]) &^ (1 << 31), payload
}

// hpackLiteral appends a header field "without indexing": the name by its
// static table index, or (index 0) as a string; strings are not Huffman-coded.
func hpackLiteral(b []byte, index int, name, value string) []byte {
	b = hpackInt(b, 0x00, 4, index)
	if index == 0 {
		b = hpackInt(b, 0x00, 7, len(name))
		b = append(b, name...)
	}
	b = hpackInt(b, 0x00, 7, len(value))
	return append(b, value...)
}

// hpackInt appends n as an HPACK integer with an n-bit prefix (RFC 7541, 5.1).
func hpackInt(b []byte, first byte, prefix, n int) []byte {
	limit := 1<<prefix - 1
	if n < limit {
		return append(b, first|byte(n))
	}
	b = append(b, first|byte(limit))
	for n -= limit; n >= 128; n >>= 7 {
		b = append(b, byte(n%128+128))
	}
	return append(b, byte(n))
}

// h2Settings opens an HTTP/2 connection with prior knowledge and returns the
// settings the server announces in its first frame.
func h2Settings(t *testing.T, u string) map[uint16]uint32 {
	t.Helper()
	typ, _, _, payload := readFrame(t, h2Conn(t, u))
	if typ != 0x4 || len(payload)%6 != 0 {
		t.Fatalf("the server's first frame is type %d, %d bytes; want SETTINGS", typ, len(payload))
	}
	out := map[uint16]uint32{}
	for i := 0; i < len(payload); i += 6 {
		out[binary.BigEndian.Uint16(payload[i:])] = binary.BigEndian.Uint32(payload[i+2:])
	}
	return out
}
