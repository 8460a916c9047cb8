package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

// TestCRIPullsWithRegistryCredentials pulls through the CRI from Debian's
// docker-registry with its two kinds of authentication: htpasswd (HTTP
// basic) and bearer tokens from a token server (the Docker Hub flow: a 401
// names the realm, the client fetches a token for the repository's scope
// with the credentials, then retries with it). Credentials come from the
// request's AuthConfig as username and password or as the base64 "auth"
// field; none, or wrong ones, fail the pull and leave no image behind.
func TestCRIPullsWithRegistryCredentials(t *testing.T) {
	requireRoot(t)
	requireTool(t, "docker-registry", "docker-registry")
	if _, err := testimage.BusyboxPath(); err != nil {
		t.Skip(err)
	}
	bb, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	// Images go in through an open registry; the authenticating ones serve
	// the same storage.
	data := t.TempDir()
	open := startRegistry(t, data, "")
	open.push(t, bb, nil, "private/busybox", "v1")

	const user, password = "kube", "s3cret"
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	basicHost := startRegistry(t, data, fmt.Sprintf("auth:\n  htpasswd:\n    realm: flotilla-test\n    path: %s\n", htpasswd)).Host

	ts := startTokenServer(t, user, password)
	tokenHost := startRegistry(t, data, fmt.Sprintf(
		"auth:\n  token:\n    realm: %s\n    service: flotilla-registry\n    issuer: flotilla-test-issuer\n    rootcertbundle: %s\n",
		ts.realm, ts.certFile)).Host

	d := newDaemon(t).start()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, images := criClients(t, d)

	encoded := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	for _, tc := range []struct {
		name string
		host string
	}{
		{"htpasswd", basicHost},
		{"token", tokenHost},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := tc.host + "/private/busybox:v1"
			spec := &runtimeapi.ImageSpec{Image: ref}
			for _, bad := range []*runtimeapi.AuthConfig{
				nil,
				{Username: user, Password: "wrong"},
			} {
				if _, err := images.PullImage(ctx, spec, bad, nil); err == nil {
					t.Fatalf("pull of %s with credentials %v succeeded", ref, bad)
				} else if msg := strings.ToLower(err.Error()); !strings.Contains(msg, "401") && !strings.Contains(msg, "authoriz") {
					t.Errorf("a refused pull should say it was not authorized: %v", err)
				}
				if st, err := images.ImageStatus(ctx, spec, false); err != nil || st.GetImage() != nil {
					t.Fatalf("after a refused pull ImageStatus = %v, %v; want no image", st.GetImage(), err)
				}
			}
			for _, good := range []*runtimeapi.AuthConfig{
				{Username: user, Password: password, ServerAddress: tc.host},
				{Auth: encoded},
			} {
				id, err := images.PullImage(ctx, spec, good, nil)
				if err != nil {
					t.Fatalf("pull of %s with credentials: %v", ref, err)
				}
				if err := images.RemoveImage(ctx, &runtimeapi.ImageSpec{Image: id}); err != nil {
					t.Fatal(err)
				}
			}
			// Credentials for another registry are not sent to this one.
			if _, err := images.PullImage(ctx, spec, &runtimeapi.AuthConfig{Username: user, Password: password, ServerAddress: "elsewhere.example"}, nil); err == nil {
				t.Fatal("credentials given for another server were used")
			}
		})
	}
	if ts.issued.Load() == 0 {
		t.Fatal("the token server issued no token")
	}
}

// tokenServer issues the registry's bearer tokens (Docker's token
// authentication: a JWT signed with a key whose certificate the registry
// trusts, naming the repositories and actions granted) to a client that
// proves the one user's password, by GET with basic auth or by the OAuth2
// password grant (POST), which containerd's client tries first.
type tokenServer struct {
	realm    string
	certFile string
	issued   atomic.Int64
}

func startTokenServer(t *testing.T, user, password string) *tokenServer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "flotilla-test-issuer"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ts := &tokenServer{certFile: filepath.Join(t.TempDir(), "issuer.pem")}
	if err := os.WriteFile(ts.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}

	sign := func(service, scope string) (string, error) {
		var access []map[string]any
		// scope is "repository:<name>:<actions>", several space-separated.
		for _, s := range strings.Fields(scope) {
			parts := strings.Split(s, ":")
			if len(parts) != 3 {
				continue
			}
			access = append(access, map[string]any{"type": parts[0], "name": parts[1], "actions": strings.Split(parts[2], ",")})
		}
		now := time.Now()
		header, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{base64.StdEncoding.EncodeToString(der)}})
		claims, _ := json.Marshal(map[string]any{
			"iss": "flotilla-test-issuer", "sub": user, "aud": service,
			"exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
			"jti": fmt.Sprint(now.UnixNano()), "access": access,
		})
		enc := base64.RawURLEncoding
		signing := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
		h := sha256.Sum256([]byte(signing))
		r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
		if err != nil {
			return "", err
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return signing + "." + enc.EncodeToString(sig), nil
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, req *http.Request) {
		var u, p, service, scope string
		switch req.Method {
		case http.MethodGet:
			u, p, _ = req.BasicAuth()
			service, scope = req.URL.Query().Get("service"), strings.Join(req.URL.Query()["scope"], " ")
		case http.MethodPost:
			if err := req.ParseForm(); err != nil || req.PostForm.Get("grant_type") != "password" {
				http.Error(w, "unsupported grant", http.StatusBadRequest)
				return
			}
			u, p = req.PostForm.Get("username"), req.PostForm.Get("password")
			service, scope = req.PostForm.Get("service"), req.PostForm.Get("scope")
		default:
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if u != user || p != password {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		tok, err := sign(service, scope)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		ts.issued.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"token": tok, "access_token": tok, "expires_in": 300, "issued_at": time.Now().UTC().Format(time.RFC3339),
		})
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { _ = srv.Close() })
	ts.realm = "http://" + l.Addr().String() + "/token"
	return ts
}
