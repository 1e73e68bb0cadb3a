#!/usr/bin/env bash
# System calls, context switches and CPU of running proxies over a window:
# the counts behind "The engine's own socket calls" in test/BENCHMARKS.md.
# Run it while test/httpbench/run.sh loads a path, with that path's
# processes, e.g. (32 connections, ursa's window of a direct,nginx,ursa run):
#
#   test/httpbench/syscalls.sh 4 $(pgrep -x ursa-dp)
#   test/httpbench/syscalls.sh 4 $(pgrep -f 'nginx: worker')
#
# and divide by the requests the load generator counted in the same window
# (or compare per write: each proxy writes twice per request). Needs root
# and perf (Debian: linux-perf); mounts tracefs when it is not mounted.
# Prints "name count" lines; the second window counts the reads that found
# nothing (EAGAIN).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 SECONDS PID..." >&2; exit 2; }
secs=$1
shift
pids=$(IFS=,; echo "$*")
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
if [[ ! -d /sys/kernel/tracing/events/syscalls ]]; then
	mount -t tracefs nodev /sys/kernel/tracing
fi
events=task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter
for s in read write recvfrom sendto readv writev epoll_wait epoll_pwait futex nanosleep sched_yield; do
	events+=,syscalls:sys_enter_$s
done
perf stat -x, -p "$pids" -e "$events" -- sleep "$secs" 2>&1 |
	awk -F, '$1 != "0" && $3 != "" {printf "%-32s %s\n", $3, $1}'
perf stat -x, -p "$pids" -e syscalls:sys_exit_read,syscalls:sys_exit_recvfrom --filter 'ret == -11' -- sleep "$secs" 2>&1 |
	awk -F, '$3 != "" {printf "EAGAIN %-25s %s\n", $3, $1}'
