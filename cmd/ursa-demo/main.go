// Command ursa-demo is the small HTTP service `make demo` runs in each zone:
// it answers every request with its message, so a caller sees which zone
// served it.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	message := flag.String("message", "hello", "what to answer")
	flag.Parse()
	srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, *message) })}
	log.Fatal(srv.ListenAndServe())
}
