package testutil

import "net"

// ServeEach serves every connection ln accepts with handle, on its own
// goroutine, and closes the connection when handle returns. It returns
// when ln closes: run it with go.
func ServeEach(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}
