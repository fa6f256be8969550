package testenv

import (
	"net"
	"strconv"
	"testing"
)

// FreePorts hands out distinct ports, each of which can then be listened on.
func TestFreePorts(t *testing.T) {
	ports := FreePorts(t, 50)
	seen := map[int]bool{}
	var lc net.ListenConfig
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d handed out twice in %v", p, ports)
		}
		seen[p] = true
		l, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("listen on free port %d: %v", p, err)
		}
		_ = l.Close()
	}
}
