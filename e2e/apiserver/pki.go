package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names inside the lab directory.
const (
	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	serverCertFile = "apiserver.crt"
	serverKeyFile  = "apiserver.key"
	adminCertFile  = "admin.crt"
	adminKeyFile   = "admin.key"
	saKeyFile      = "sa.key" // RSA private key: signs and verifies ServiceAccount tokens
	saPubFile      = "sa.pub"
)

// Certificates live for ten years: a lab directory may be reused across
// test runs and must never start failing because a cert expired.
const certLifetime = 10 * 365 * 24 * time.Hour

// serviceIP is the first address of --service-cluster-ip-range, the ClusterIP
// of the "kubernetes" Service; in-cluster clients dial it.
var serviceIP = net.ParseIP("10.96.0.1")

type keyPair struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	keyPEM  []byte
}

// ensurePKI creates (or reuses, if present) the CA, the apiserver serving
// cert, the admin client cert and the ServiceAccount signing key in dir.
// Reusing keeps kubeconfigs written by an earlier run valid.
func ensurePKI(dir string) error {
	ca, err := loadKeyPair(dir, caCertFile, caKeyFile)
	if errors.Is(err, os.ErrNotExist) {
		ca, err = newCA()
		if err == nil {
			err = writeKeyPair(dir, caCertFile, caKeyFile, ca)
		}
	}
	if err != nil {
		return fmt.Errorf("CA: %w", err)
	}

	if _, err := loadKeyPair(dir, serverCertFile, serverKeyFile); errors.Is(err, os.ErrNotExist) {
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames: []string{
				"localhost", "kubernetes", "kubernetes.default",
				"kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
			},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, serviceIP},
		}
		kp, err := issue(ca, tmpl)
		if err == nil {
			err = writeKeyPair(dir, serverCertFile, serverKeyFile, kp)
		}
		if err != nil {
			return fmt.Errorf("serving cert: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("serving cert: %w", err)
	}

	if _, err := loadKeyPair(dir, adminCertFile, adminKeyFile); errors.Is(err, os.ErrNotExist) {
		kp, err := issueClient(ca, "admin", []string{"system:masters"})
		if err == nil {
			err = writeKeyPair(dir, adminCertFile, adminKeyFile, kp)
		}
		if err != nil {
			return fmt.Errorf("admin cert: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("admin cert: %w", err)
	}

	if _, err := os.Stat(filepath.Join(dir, saKeyFile)); errors.Is(err, os.ErrNotExist) {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(dir, saPubFile), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
			return err
		}
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
		if err := writeFile(filepath.Join(dir, saKeyFile), keyPEM, 0o600); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	return nil
}

func newCA() (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: "kube-lab-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return toKeyPair(der, key)
}

// issueClient signs a client certificate: CN is the user name, O the groups,
// exactly how kube-apiserver's x509 authenticator maps them.
func issueClient(ca *keyPair, user string, groups []string) (*keyPair, error) {
	return issue(ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: groups},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func issue(ca *keyPair, tmpl *x509.Certificate) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl.SerialNumber = newSerial()
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(certLifetime)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, err
	}
	return toKeyPair(der, key)
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}

func toKeyPair(der []byte, key *ecdsa.PrivateKey) (*keyPair, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &keyPair{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func loadKeyPair(dir, certFile, keyFile string) (*keyPair, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, certFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("%s/%s: not PEM", certFile, keyFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key, certPEM: certPEM, keyPEM: keyPEM}, nil
}

func writeKeyPair(dir, certFile, keyFile string, kp *keyPair) error {
	if err := writeFile(filepath.Join(dir, keyFile), kp.keyPEM, 0o600); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, certFile), kp.certPEM, 0o644)
}

// writeFile writes atomically (temp file + rename) so a reader never sees a
// half-written cert or kubeconfig.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
