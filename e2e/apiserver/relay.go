package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

// endpoint parses tcp:HOST:PORT or unix:PATH.
func endpoint(s string) (network, addr string, err error) {
	network, addr, ok := strings.Cut(s, ":")
	if !ok || (network != "tcp" && network != "unix") || addr == "" {
		return "", "", fmt.Errorf("%q: want tcp:HOST:PORT or unix:PATH", s)
	}
	return network, addr, nil
}

// listenUntilSignal listens on s (a stale unix socket file is replaced) and closes the
// listener on SIGTERM/SIGINT.
func listenUntilSignal(s string) (net.Listener, error) {
	network, addr, err := endpoint(s)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		os.Remove(addr)
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; l.Close() }()
	return l, nil
}

// splice copies both ways until either side closes, then closes both.
func splice(a, b net.Conn) {
	var once sync.Once
	done := func() { once.Do(func() { a.Close(); b.Close() }) }
	go func() { io.Copy(a, b); done() }()
	io.Copy(b, a)
	done()
}

func cmdRelay(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: kube-lab relay LISTEN TARGET")
	}
	tn, ta, err := endpoint(args[1])
	if err != nil {
		return err
	}
	l, err := listenUntilSignal(args[0])
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return nil // closed by a signal
		}
		go func() {
			t, err := net.DialTimeout(tn, ta, 10*time.Second)
			if err != nil {
				logf("relay %s: %v", args[1], err)
				c.Close()
				return
			}
			splice(c, t)
		}()
	}
}

// cmdConnectProxy serves HTTP CONNECT on a unix socket, as the API server's egress selector
// (proxyProtocol HTTPConnect, transport uds) speaks it: one CONNECT per connection, then raw
// bytes both ways.
func cmdConnectProxy(args []string) error {
	if len(args) != 1 || !strings.HasPrefix(args[0], "unix:") {
		return errors.New("usage: kube-lab connect-proxy unix:PATH")
	}
	l, err := listenUntilSignal(args[0])
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return nil
		}
		go func() {
			br := bufio.NewReader(c)
			req, err := http.ReadRequest(br)
			if err != nil || req.Method != http.MethodConnect {
				fmt.Fprint(c, "HTTP/1.1 400 Bad Request\r\n\r\n")
				c.Close()
				return
			}
			t, err := net.DialTimeout("tcp", req.Host, 10*time.Second)
			if err != nil {
				fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
				c.Close()
				return
			}
			fmt.Fprint(c, "HTTP/1.1 200 Connection established\r\n\r\n")
			if n := br.Buffered(); n > 0 { // bytes the client sent after the CONNECT
				b, _ := br.Peek(n)
				t.Write(b)
			}
			splice(c, t)
		}()
	}
}
