package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	etcdversion "go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/server/v3/embed"

	_ "k8s.io/component-base/logs/json/register"          // as in cmd/kube-apiserver: JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // as in cmd/kube-apiserver: client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // as in cmd/kube-apiserver: version metric
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

// How long a clean shutdown may take before we give up on it.
const shutdownTimeout = 30 * time.Second

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "kube-lab: "+format+"\n", a...)
}

func cmdServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	dir := fs.String("dir", "", "lab directory: certs, kubeconfig, etcd data (required; created if missing)")
	port := fs.Int("port", 0, "apiserver port on 127.0.0.1 (0 = a free port)")
	exitOnEOF := fs.Bool("exit-on-stdin-eof", false, "shut down cleanly when stdin reaches EOF (a parent holding the pipe died or closed it)")
	saAdmission := fs.Bool("service-account-admission", false, "keep the ServiceAccount admission plugin (a controller-manager runs: pods get their token volume)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		fs.Usage()
		return errors.New("--dir is required")
	}
	extra := fs.Args() // after "--": passed to kube-apiserver verbatim
	start := time.Now()

	d, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	// One server per directory: etcd would otherwise block on its data lock.
	lock, err := os.OpenFile(filepath.Join(d, "kube-lab.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("%s is in use by another kube-lab serve: %w", d, err)
	}
	os.Remove(filepath.Join(d, "lab.json")) // stale from an earlier run

	if err := ensurePKI(d); err != nil {
		return err
	}

	// The command installs the SIGTERM/SIGINT handler (a second signal exits
	// at once); its context is cancelled on the first signal, which makes
	// the apiserver shut down gracefully. We then stop etcd.
	cmd := app.NewAPIServerCommand()
	ctx := cmd.Context()
	if *exitOnEOF {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			logf("stdin closed: shutting down")
			syscall.Kill(os.Getpid(), syscall.SIGTERM) // same path as a real SIGTERM
		}()
	}

	etcd, etcdURL, err := startEtcd(ctx, d)
	if err != nil {
		return err
	}
	defer func() {
		t := time.Now()
		etcd.Close()
		logf("etcd stopped in %v", time.Since(t).Round(time.Millisecond))
	}()
	logf("etcd %s ready at %s after %v", etcdversion.Version, etcdURL, time.Since(start).Round(time.Millisecond))

	apiPort := *port
	if apiPort == 0 {
		if apiPort, err = freePort(); err != nil {
			return err
		}
	}
	server := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	p := func(name string) string { return filepath.Join(d, name) }
	admission := []string{
		// No controller-manager runs, so nothing would create the ServiceAccounts this
		// plugin waits for.
		"--disable-admission-plugins=ServiceAccount",
	}
	if *saAdmission {
		admission = nil // the real-node tier runs kube-controller-manager
	}
	cmd.SetArgs(append(append([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + p("apiserver-certs"),
		"--tls-cert-file=" + p(serverCertFile),
		"--tls-private-key-file=" + p(serverKeyFile),
		"--client-ca-file=" + p(caCertFile),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p(saPubFile),
		"--service-account-signing-key-file=" + p(saKeyFile),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.96.0.0/16",
		// Agents (DaemonSets) are often privileged pods.
		"--allow-privileged=true",
		// Endpoints may not point at loopback; nothing could reach it anyway.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	}, admission...), extra...))

	apiErr := make(chan error, 1)
	go func() { apiErr <- cmd.Execute() }()

	ready, err := waitReady(ctx, d, server, apiErr)
	if err != nil {
		return err
	}
	if ready {
		kubeconfig := p("kubeconfig")
		admin, err := loadKeyPair(d, adminCertFile, adminKeyFile)
		if err != nil {
			return err
		}
		ca, err := os.ReadFile(p(caCertFile))
		if err != nil {
			return err
		}
		if err := writeKubeconfig(kubeconfig, server, ca, "admin", admin); err != nil {
			return err
		}
		info, _ := json.MarshalIndent(labInfo{
			Server: server, Kubeconfig: kubeconfig, CAFile: p(caCertFile), Etcd: etcdURL,
			PID: os.Getpid(), K8sVersion: k8sVersion(), EtcdVersion: etcdversion.Version,
		}, "", "  ")
		if err := writeFile(p("lab.json"), append(info, '\n'), 0o644); err != nil {
			return err
		}
		defer os.Remove(p("lab.json"))
		logf("kube-apiserver %s ready at %s after %v", k8sVersion(), server, time.Since(start).Round(time.Millisecond))
		fmt.Printf("READY %s\n", kubeconfig)
	}

	select {
	case err := <-apiErr: // returns after a signal, or on a fatal error
		if ctx.Err() == nil {
			return fmt.Errorf("kube-apiserver exited: %v", err)
		}
		logf("kube-apiserver stopped")
		return err
	case err := <-etcd.Err():
		return fmt.Errorf("etcd failed: %w", err)
	case <-ctx.Done():
	}
	stopping := time.Now()
	defer func() { logf("kube-apiserver stopped in %v", time.Since(stopping).Round(time.Millisecond)) }()
	select {
	case err := <-apiErr:
		return err
	case <-time.After(shutdownTimeout):
		return errors.New("kube-apiserver did not stop in time")
	}
}

// waitReady polls /readyz (as admin) until it answers "ok" and the "default"
// namespace exists (created asynchronously by a post-start hook). It returns
// false without error if the context is cancelled first.
func waitReady(ctx context.Context, dir, server string, apiErr chan error) (bool, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, adminCertFile), filepath.Join(dir, adminKeyFile))
	if err != nil {
		return false, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return false, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{cert},
		}},
	}
	defer client.CloseIdleConnections()
	ok := func(path string) bool {
		resp, err := client.Get(server + path)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && (path != "/readyz" || string(body) == "ok")
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-apiErr:
			apiErr <- err // for the caller
			if ctx.Err() != nil {
				return false, nil
			}
			return false, fmt.Errorf("kube-apiserver exited before ready: %v", err)
		case <-ctx.Done():
			return false, nil
		case <-tick.C:
			if ok("/readyz") && ok("/api/v1/namespaces/default") {
				return true, nil
			}
		}
	}
}

// startEtcd starts a single-member etcd on loopback with data in DIR/etcd
// and logs in DIR/etcd.log. fsync is off: test data need not survive a crash.
func startEtcd(ctx context.Context, dir string) (*embed.Etcd, string, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // a picked port may be taken meanwhile
		cport, err := freePort()
		if err != nil {
			return nil, "", err
		}
		pport, err := freePort()
		if err != nil {
			return nil, "", err
		}
		cu := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(cport)}
		pu := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(pport)}

		cfg := embed.NewConfig()
		cfg.Name = "kube-lab"
		cfg.Dir = filepath.Join(dir, "etcd")
		cfg.ListenClientUrls = []url.URL{cu}
		cfg.AdvertiseClientUrls = []url.URL{cu}
		cfg.ListenPeerUrls = []url.URL{pu}
		cfg.AdvertisePeerUrls = []url.URL{pu}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		cfg.Logger = "zap"
		cfg.LogLevel = "warn"
		cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
		cfg.UnsafeNoFsync = true
		// A lone member need not wait out a production election timeout
		// (1s) before it leads; loopback round trips are microseconds.
		cfg.TickMs = 10
		cfg.ElectionMs = 100
		// NewConfig leaves this 0, which logs every request as "expensive".
		cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration

		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
			return e, cu.String(), nil
		case err := <-e.Err():
			e.Close()
			return nil, "", fmt.Errorf("etcd: %w", err)
		case <-time.After(60 * time.Second):
			e.Close()
			return nil, "", errors.New("etcd: not ready after 60s (see etcd.log)")
		case <-ctx.Done():
			e.Close()
			return nil, "", ctx.Err()
		}
	}
	return nil, "", fmt.Errorf("etcd: %w", lastErr)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
