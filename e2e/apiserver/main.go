// kube-lab runs a real Kubernetes API server for tests: the kube-apiserver of
// the k8s.io/kubernetes module, in-process, on top of an embedded etcd, bound
// to loopback, with generated certificates. No scheduler, controller-manager
// or kubelet runs: objects are stored and validated, nothing acts on them.
//
//	kube-lab serve --dir DIR [--port 0] [--exit-on-stdin-eof] [-- EXTRA-KUBE-APISERVER-FLAGS...]
//	kube-lab kubeconfig --dir DIR --user NAME [--group G]... [--out PATH]
//	kube-lab version
package main

import (
	"fmt"
	"os"
	"runtime/debug"

	etcdversion "go.etcd.io/etcd/api/v3/version"
)

const usage = `kube-lab: a real kube-apiserver + embedded etcd for tests

  kube-lab serve --dir DIR [--port N] [--exit-on-stdin-eof] [-- EXTRA-KUBE-APISERVER-FLAGS...]
      Start etcd and kube-apiserver on 127.0.0.1 (port 0 = any free port),
      write certs, DIR/kubeconfig (user "admin", group system:masters) and
      DIR/lab.json, print "READY <kubeconfig>" on stdout once /readyz is ok,
      serve until SIGTERM/SIGINT (or, with --exit-on-stdin-eof, until stdin
      closes). Logs go to stderr (etcd: DIR/etcd.log).

  kube-lab kubeconfig --dir DIR --user NAME [--group G]... [--out PATH]
      Sign a client cert for NAME/groups with the lab CA and write a
      kubeconfig for it (default DIR/kubeconfig-NAME); prints its path.

  kube-lab relay LISTEN TARGET
      Copy every connection accepted on LISTEN to a new connection to TARGET
      (each tcp:HOST:PORT or unix:PATH), until SIGTERM. A unix socket crosses
      network namespaces: the real-node tier (e2e/node) pairs two relays to
      reach the API server from a node's namespace.

  kube-lab connect-proxy unix:PATH
      An HTTP CONNECT proxy on a unix socket (the API server's egress selector
      "cluster" transport): run inside the nodes' underlay namespace, it lets
      the API server on the host's loopback reach the kubelets.

  kube-lab version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = cmdServe(os.Args[2:])
	case "kubeconfig":
		err = cmdKubeconfig(os.Args[2:])
	case "relay":
		err = cmdRelay(os.Args[2:])
	case "connect-proxy":
		err = cmdConnectProxy(os.Args[2:])
	case "version", "--version":
		fmt.Printf("kube-apiserver %s\netcd %s\n", k8sVersion(), etcdversion.Version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kube-lab %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// k8sVersion is the k8s.io/kubernetes module version compiled in.
func k8sVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "k8s.io/kubernetes" {
				return m.Version
			}
		}
	}
	return "unknown"
}
