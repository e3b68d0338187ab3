// pause: the sandbox image's process for the real-node tier (e2e/node): it holds the pod's
// namespaces and sleeps until SIGTERM or SIGINT, like Kubernetes' own pause (which reaps
// zombies too; here nothing shares its PID namespace).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
