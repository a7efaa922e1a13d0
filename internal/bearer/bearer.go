// Package bearer sends forge's credentials: an "Authorization: Bearer <token>"
// header on each call. Agents, the CLI, the benchmark and the tests all send
// tokens this way.
package bearer

import (
	"context"
	"net/http"

	"connectrpc.com/connect"
)

// Set puts token in h as a bearer credential.
func Set(h http.Header, token string) { h.Set("Authorization", "Bearer "+token) }

// Interceptor returns a Connect interceptor that sends token with every unary call.
func Interceptor(token string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			Set(req.Header(), token)
			return next(ctx, req)
		}
	}
}
