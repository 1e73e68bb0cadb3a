package zone

// DefaultGCPercent is the zone CP's garbage collection target (what GOGC
// sets) unless configured otherwise. A zone CP's live heap is small for
// what it serves (~35 kB per connected proxy) and a full push allocates
// several times that, so the default of 100 spends a third of a push's CPU
// collecting; at 400 the heap may grow to five times the live heap between
// collections (peak ~0.2 MB per proxy, within the ~1 GiB a 10k-proxy zone
// CP is sized for), and a push on 2 cores takes a third less CPU. Bound it
// with GOMEMLIMIT where memory is tight: the collector then runs more often
// instead of exceeding the limit. The zone CP applies it with gctune.Fixed,
// and so do the xDS benchmarks, so that their figures are the zone CP's.
const DefaultGCPercent = 400
