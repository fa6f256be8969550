package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the service's HTTP listener for Prometheus and orchestrators:
//
//	GET /metrics  the metrics of g, in Prometheus' text format
//	GET /healthz  200 "ok" while the process runs (liveness)
//	GET /readyz   200 "ready" when ready says so, else 503 with its error (readiness)
//
// It is a runner service: Start serves, Shutdown stops. Start it before the
// workers so it stops after them and answers /readyz (not ready) while they
// drain.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// ReadyTimeout bounds one readiness check.
const ReadyTimeout = 2 * time.Second

// Listen opens addr (host:port; ":0" picks a free port, see Addr). ready
// is called for each /readyz with a ctx bounded by [ReadyTimeout]; nil
// means always ready.
func Listen(addr string, g prometheus.Gatherer, ready func(context.Context) error) (*Server, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics and health checks on METRICS_ADDR=%q: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
			defer cancel()
			if err := ready(ctx); err != nil {
				http.Error(w, "not ready: "+strings.ReplaceAll(err.Error(), "\n", "; "), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = fmt.Fprintln(w, "ready")
	})
	return &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Start serves in the background.
func (s *Server) Start(context.Context) error {
	go func() {
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("the metrics and health listener stopped; /metrics, /healthz and /readyz are not served", "addr", s.Addr(), "err", err)
		}
	}()
	return nil
}

// Shutdown stops serving, letting requests in progress finish until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }
