package server

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// pageFiles are the fleet page: one HTML file, its script and its style sheet,
// served as they are (no build step).
//
//go:embed page
var pageFiles embed.FS

// pageSecurity are the headers every file of the page is served with. The page
// runs only its own script and style (no inline code, nothing from elsewhere),
// talks only to this server, cannot be framed, and sends no Referer.
var pageSecurity = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
		"connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
	"X-Content-Type-Options": "nosniff",
	"X-Frame-Options":        "DENY",
	"Referrer-Policy":        "no-referrer",
	"Cache-Control":          "no-cache",
}

// mountPage serves the fleet page at / and its files under /ui/. The files
// hold no data and need no token: the page asks for the operator token and
// sends it, as a bearer header, with each ControlService call it makes (see
// docs/design.md, "The fleet page").
func (s *Server) mountPage() {
	sub, _ := fs.Sub(pageFiles, "page") // the directory is embedded: it exists
	files := http.FileServerFS(sub)
	secure := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for k, v := range pageSecurity {
				w.Header().Set(k, v)
			}
			h.ServeHTTP(w, r)
		})
	}
	s.mux.Handle("GET /{$}", secure(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, sub, "index.html")
	})))
	s.mux.Handle("GET /ui/", secure(http.StripPrefix("/ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // no directory listings
			return
		}
		files.ServeHTTP(w, r)
	}))))
}
