package zone

import (
	"os"
	"runtime/debug"

	"go.uber.org/zap"
)

// DefaultGCPercent is the zone CP's garbage collection target (what GOGC
// sets) unless configured otherwise. A zone CP's live heap is small for
// what it serves (~35 kB per connected proxy) and a full push allocates
// several times that, so the default of 100 spends a third of a push's CPU
// collecting; at 400 the heap may grow to five times the live heap between
// collections (peak ~0.2 MB per proxy, within the ~1 GiB a 10k-proxy zone
// CP is sized for), and a push on 2 cores takes a third less CPU. Bound it
// with GOMEMLIMIT where memory is tight: the collector then runs more often
// instead of exceeding the limit.
const DefaultGCPercent = 400

// ApplyGCPercent sets the process's garbage collection target to percent,
// unless the GOGC environment variable is set (it wins) or percent is 0
// (Go's default stays). The setting is the process's, so the zone CP
// applies it once at start; the xDS benchmark applies it the same way, so
// that its figures are the zone CP's.
func ApplyGCPercent(percent int, log *zap.Logger) {
	if v, ok := os.LookupEnv("GOGC"); ok {
		log.Info("garbage collection target from GOGC", zap.String("gogc", v))
		return
	}
	if percent == 0 {
		return
	}
	debug.SetGCPercent(percent)
	log.Info("garbage collection target", zap.Int("gc_percent", percent))
}
